"""How library code reports progress and warnings: one small protocol, rendered by the CLI.

A library function (`rodscli.stages.*`, `rodscli.synth`) prints nothing, shows no progress
bar of its own and touches no global output setting. One that runs long, or has something
to tell the user that is not an error, takes `reporter: Reporter | None = None`, wraps its
long loops in `reporter.track(items, "what")` and says the rest with `reporter.warn(text)`.

The CLI passes `rodscli.console.BARS` (rich bars on stderr, plain lines in a log file,
nothing with --quiet; warnings as `warning: ...`). A Python caller passes nothing (`Silent`:
no output, the warnings kept in `.warnings`) or any object with these two methods (a tqdm
wrapper, a logger). docs/architecture.md section 1 ("A thin CLI over a library").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Reporter(Protocol):
    def track(self, items: Iterable[T], description: str, total: int | None = None,
              status: Callable[[], str] | None = None) -> Iterable[T]:
        """`items`, unchanged, counted as they are consumed (`total`: their number when `items` has no len);
        `status()`, called after each item, is a short text to show beside the count (e.g. the recent loss)."""
        ...

    def warn(self, message: str) -> None:
        """Something the user should know that does not stop the work (plain text, no markup)."""
        ...


class Silent:
    """The default Reporter: shows nothing, keeps the warnings for the caller to read."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def track(self, items: Iterable[T], description: str, total: int | None = None,
              status: Callable[[], str] | None = None) -> Iterable[T]:
        return items

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def or_silent(reporter: Reporter | None) -> Reporter:
    """`reporter`, or a fresh Silent one when the caller gave none."""
    return Silent() if reporter is None else reporter
