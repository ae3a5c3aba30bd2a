"""Terminal output on stderr only (stdout stays clean for pipes): messages and progress bars.

The CLI's side of the line: library code never imports this module; it reports through the
`rodscli.reporter.Reporter` it is given, and the CLI gives it `BARS`, which renders here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
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
# stderr that is not a terminal (a log file, make's output) gets a plain progress line this often, in seconds:
# rich draws a bar there only once, when the work is done
LOG_EVERY_S = float(os.environ.get("RODS_PROGRESS_EVERY", "30"))


def info(message: str) -> None:
    """A line on stderr (shown unless --quiet). Never cut into lines at the console's width: a path
    or a number in it stays whole in a log (a terminal still folds it on screen)."""
    if VERBOSITY >= 1:
        console.print(message, soft_wrap=True)


def warn(message: str) -> None:
    """A warning on stderr (shown unless --quiet)."""
    if VERBOSITY >= 1:
        console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def debug(message: str) -> None:
    if VERBOSITY >= 2:
        console.print(f"[dim]{message}[/dim]", soft_wrap=True)


def progress(items: Iterable[T], description: str, total: int | None = None,
             status: Callable[[], str] | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (nothing when quiet); `status()`, called after each
    item, is shown beside it (e.g. the recent loss)."""
    if VERBOSITY < 1:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if not console.is_terminal:
        yield from _logged(items, description, total, status)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total, status="")
        for item in items:
            yield item
            bar.update(task, advance=1, status=status() if status else "")


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"


def _logged(items: Iterable[T], description: str, total: int | None, status: Callable[[], str] | None) -> Iterator[T]:
    """Progress for a log: a line every LOG_EVERY_S seconds and one at the end, each a complete record."""
    start = last = time.monotonic()
    done = 0

    def line(now: float) -> str:
        elapsed = now - start
        extra = f", {status()}" if status and done else ""
        if not total:
            return f"{description}: {done} done, {_clock(elapsed)} elapsed{extra}"
        left = f", ~{_clock(elapsed / done * (total - done))} left" if 0 < done < total else ""
        return f"{description}: {done}/{total} ({done / total:.0%}), {_clock(elapsed)} elapsed{left}{extra}"

    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= LOG_EVERY_S and (not total or done < total):
            console.print(line(now), highlight=False, soft_wrap=True)
            last = now
    console.print(line(time.monotonic()), highlight=False, soft_wrap=True)


class Bars:
    """The CLI's Reporter (rodscli.reporter): `progress` bars and `warn` lines on stderr."""

    def track(self, items: Iterable[T], description: str, total: int | None = None,
              status: Callable[[], str] | None = None) -> Iterator[T]:
        return progress(items, description, total, status)

    def warn(self, message: str) -> None:
        warn(message)


BARS = Bars()
