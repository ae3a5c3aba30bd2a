"""Errors a user can cause, and how the CLI shows them.

A `RodsError` is a user mistake (bad file, bad option, unreachable backend): the CLI prints
one line naming the file, line and field, and exits 2. Anything else is a bug: traceback, exit 1.
"""

from __future__ import annotations


class RodsError(Exception):
    """A user-caused error. `where` is 'file:line' (or just 'file'); `field` a JSON path."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.field = field

    def __str__(self) -> str:
        parts = [p for p in (self.where, self.field) if p]
        prefix = ": ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class InputError(RodsError):
    """An input file is missing, unreadable or not in the expected format."""


class ValidationError(RodsError):
    """A record does not match its schema. `problems` holds every (where, field, message)."""

    def __init__(self, problems: list[tuple[str, str, str]]):
        self.problems = problems
        where, field, message = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(message + more, where=where, field=field)


class OptionError(RodsError):
    """A command-line option has a bad value or options conflict."""


class BackendError(RodsError):
    """A policy backend could not run (bad checkpoint, server down, out of memory)."""
