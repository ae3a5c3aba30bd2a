"""Terminal output on stderr only (stdout stays clean for pipes): messages and progress bars."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)
if not console.is_terminal and "COLUMNS" not in os.environ:
    # a log file or a pipe has no width: rich would assume 80 columns and cut numbers in tables
    console.width = 160
# set by the CLI's global options: 0 quiet, 1 normal, 2 verbose
VERBOSITY = 1


def info(message: str) -> None:
    if VERBOSITY >= 1:
        console.print(message)


def debug(message: str) -> None:
    if VERBOSITY >= 2:
        console.print(f"[dim]{message}[/dim]")


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (nothing when quiet)."""
    if VERBOSITY < 1:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
