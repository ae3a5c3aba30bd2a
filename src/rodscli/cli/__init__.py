"""The `rods` command line: one thin command per stage.

Each command parses options into the stage's options object, opens files, shows progress
and renders errors; the work is a library call in `rodscli.stages.*` that takes and
returns plain records. User mistakes (RodsError) print one line and exit 2; anything else
is a bug and shows its traceback (exit 1).

This module holds the app, the global options, what every command shares (provenance,
output-path checks) and the error rendering; the commands live in `files` (validate,
convert, schema), `tasks`, `policy` (init-policy, rollout, reload-servers, eval), `loop`
(score, detect, synthesize, merge-buffer, train-step) and `report`.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import typer
from rich.markup import escape

try:  # typer >= 0.29 vendors its own click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer
    from click import ClickException

from rodscli import __version__, console, records
from rodscli.errors import RodsError, ValidationError

app = typer.Typer(
    name="rods",
    help="Reward-driven Online Data Synthesis for multi-turn tool-use RL. "
    "Stages read and write JSONL/Parquet records; `-` is JSONL on stdin/stdout.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
tasks_app = typer.Typer(help="Make, replay and inspect task files.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")


class Globals:
    """Global options, set by the app callback."""

    seed: int = 0
    validate: bool = True
    debug: bool = False
    command: list[str] | None = None  # the argv main() was given, for provenance


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rods {__version__}")
        raise typer.Exit()


@app.callback()
def _globals(
    seed: int = typer.Option(0, "--seed", help="Seed for sampling, splits, synthesis and buffer decisions."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors on stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print more detail on stderr."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip schema validation of inputs and outputs (faster)."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of user errors too."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    allow_command: list[str] = typer.Option(None, "--allow-command", help="Only these commands may run as MCP servers (a name, a path or a pattern like '/opt/mcp/*'; repeat it). Adds to RODS_ALLOW_COMMANDS. Default: any command a task file names."),
) -> None:
    if allow_command:
        from rodscli.envs.mcp import ALLOW_ENV

        given = [os.environ[ALLOW_ENV]] if os.environ.get(ALLOW_ENV) else []
        os.environ[ALLOW_ENV] = os.pathsep.join(given + list(allow_command))
    Globals.seed = seed
    Globals.validate = not no_validate
    Globals.debug = debug
    console.VERBOSITY = 0 if quiet else (2 if verbose else 1)
    # rods draws its own progress bars; transformers' (e.g. "Writing model shards") only add noise
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def provenance(inputs: list[str | Path], **extra: object) -> dict:
    """Provenance for an output of this command: inputs' hashes, the global seed, extras."""
    if Globals.command is not None:
        extra.setdefault("command", Globals.command)
    return records.provenance([str(p) for p in inputs], seed=Globals.seed, **extra)


def out_file(value: str) -> str:
    """`--out` of a record file: checked when the options are read, before any work."""
    return records.check_output(value) if value is not None else value


def out_folder(value: str) -> str:
    """`--out` of a folder (a checkpoint, a report): checked before any work."""
    return records.check_output(value, folder=True) if value is not None else value


def _render(exc: RodsError) -> None:
    # one line, whatever a library put in its message
    line = " ".join(str(exc).split("\n"))
    console.console.print(f"[bold red]error[/bold red]: {escape(line)}", highlight=False, soft_wrap=True)
    if isinstance(exc, ValidationError) and len(exc.problems) > 1:
        for where, field, message in exc.problems[1:5]:
            console.console.print(escape(f"  {where}: {field}: {message}"), highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app, render user errors, return the exit code."""
    Globals.command = ["rods", *(sys.argv[1:] if argv is None else argv)]
    try:
        code = app(args=argv, prog_name="rods", standalone_mode=False)
    except RodsError as exc:
        if Globals.debug:
            traceback.print_exc()
        _render(exc)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except ClickException as exc:
        exc.show()
        return exc.exit_code
    except typer.Abort:
        console.console.print("aborted")
        return 130
    except BrokenPipeError:  # `rods ... --out - | head`: the reader is gone, not an error
        # point stdout at /dev/null so that the interpreter's final flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    # without standalone mode, click returns a `typer.Exit(code)` raised by a command
    return code if isinstance(code, int) else 0


def run() -> None:
    sys.exit(main())


# the commands register themselves on `app` and `tasks_app` when their modules are imported,
# and `rods --help` lists them in this order (the order of the pipeline)
from rodscli.cli import files, policy, loop, report, tasks  # noqa: E402, F401, I001
