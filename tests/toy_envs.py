"""Small Python classes for the Python-class adapter's tests (importable as `toy_envs:...`)."""

from __future__ import annotations

from typing import Literal


class Notebook:
    """Pages of lines, with tags."""

    def __init__(self) -> None:
        self.pages: dict[str, list[str]] = {}
        self.tags: list[str] = []
        self._reads = 0  # private: not state, not settable from a task

    def add_page(self, title: str, lines: list[str] | None = None) -> dict:
        """Add a page; gives its number.

        Args:
            title: The page title.
            lines: The lines it starts with.
        """
        if title in self.pages:
            raise ValueError(f"page {title!r} exists")
        self.pages[title] = lines if lines is not None else []
        return {"page": len(self.pages), "title": title}

    def append(self, title: str, line: str) -> int:
        """Append a line to a page; gives the page's line count.

        Args:
            title: The page title.
            line: The text to add.
        """
        self.pages[title].append(line)
        return len(self.pages[title])

    def read(self, title: str) -> list:
        """Read a page's lines.

        Args:
            title: The page title.
        """
        self._reads += 1
        return self.pages[title]

    def tag(self, label: Literal["draft", "final"], weight: float = 1.0) -> list:
        """Tag the notebook.

        Args:
            label: draft or final.
            weight: How much the tag counts.
        """
        self.tags.append(label)
        return self.tags

    def helper(self) -> None:  # no docstring: not a tool
        self.pages.clear()

    def _wipe(self) -> None:
        """Private, documented: still not a tool."""
        self.pages.clear()


class Counter:
    """A counter, loaded by its own loader method."""

    def __init__(self) -> None:
        self.count = 0

    def load(self, config: dict) -> None:
        self.count = config.get("start", 0)

    def increment(self, by: int = 1) -> int:
        """Add to the counter.

        Args:
            by: How much to add.
        """
        self.count += by
        return self.count


_SHARED: list[int] = []


class Leaky:
    """A badly written simulator: every instance appends to one module-level list."""

    def __init__(self) -> None:
        self.seen = _SHARED

    def bump(self) -> int:
        """Record a bump; gives how many bumps were ever recorded."""
        self.seen.append(1)
        return len(self.seen)
