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


class Library:
    """Books lent to members (a simulator with entities to synthesize variants in)."""

    def __init__(self) -> None:
        self.books: dict[str, dict] = {}  # book id -> {"title", "author", "lent_to"}
        self.members: list[str] = []

    def find_book(self, title: str) -> dict:
        """Find a book by its title; gives its id.

        Args:
            title: The book's title.
        """
        for book_id, book in sorted(self.books.items()):
            if book["title"] == title:
                return {"book_id": book_id, "author": book["author"]}
        raise KeyError(f"no book titled {title!r}")

    def lend(self, book_id: str, member: str) -> dict:
        """Lend a book to a member.

        Args:
            book_id: The book's id.
            member: The member's name.
        """
        if member not in self.members:
            raise KeyError(f"no member {member!r}")
        book = self.books[book_id]
        if book["lent_to"] is not None:
            raise ValueError(f"{book_id} is already lent")
        book["lent_to"] = member
        return {"book_id": book_id, "lent_to": member}

    def loans(self, member: str) -> list:
        """The ids of the books a member has.

        Args:
            member: The member's name.
        """
        return sorted(i for i, b in self.books.items() if b["lent_to"] == member)
