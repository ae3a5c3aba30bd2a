"""`rods report`: the HTML report and tables of one or more runs, or of one study."""

from __future__ import annotations

from pathlib import Path

import typer

from rodscli import console, records
from rodscli.cli import app, out_folder
from rodscli.config import cli_options
from rodscli.errors import RodsError
from rodscli.stages.report import ReportOptions


@app.command()
@cli_options(ReportOptions, flags={"out": ("--out", "-o"), "names": ("--name",), "study": ("--study",)},
             callbacks={"out": out_folder})
def report(
    runs: list[str] = typer.Argument(..., help="Run folders written by `make loop` (RUN); several are overlaid."),
    opts: ReportOptions = None,
) -> None:
    """HTML report with plots for one or more runs (or one study); prints the tables."""
    from rich.console import Console

    from rodscli.stages.report import render_tables
    from rodscli.stages.report import report as make_report

    if opts.study:
        from rodscli.stages import study as study_stage

        if len(runs) != 1 or opts.names:
            raise RodsError("--study takes one STUDY folder (the arms' names are its sub-folders)", field="RUNS")
        summary, files = study_stage.report_study(runs[0], plots=opts.plots, n_boot=opts.n_boot)
        _write_folder(opts.out, files)
        for table in study_stage.render_tables(summary):
            Console(width=200).print(table)
        console.info(f"report: {Path(opts.out) / 'index.html'}")
        return
    summaries, files = make_report(runs, opts)
    _write_folder(opts.out, files)
    stdout = Console(width=200)
    for table in render_tables(summaries):
        stdout.print(table)
    console.info(f"report: {Path(opts.out) / 'index.html'}")


def _write_folder(out: str, files: dict[str, bytes]) -> None:
    """The report's files into `out` (made if missing), each written atomically."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        records.write_atomic_bytes(folder / name, data)
