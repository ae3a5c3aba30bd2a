"""JSON paths into live states and tool results: where a value occurs, and every value a
path pattern matches.

A path is a tuple of dict keys and list indices; its *mask* marks the steps that are
wildcards (keys of a collection of entities, list indices), so that `customers.*.name`
matches every customer's name in another world.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson

from rodscli.profile import value_key

MAX_PATHS = 12  # state paths remembered per argument value (the first ones in state order)
_FIELD = re.compile(r"^[a-z][a-z0-9_]*$")


def is_collection(node: Any) -> bool:
    """A dict keyed by entities (a wildcard level), not a record keyed by field names.

    Either every value is a record (customers by id, a folder's contents), or every value
    has one scalar type and some key is data rather than a field name (a name -> id map,
    discount codes -> percent, product ids -> quantity).
    """
    if not isinstance(node, dict) or not node:
        return False
    values = list(node.values())
    if all(isinstance(v, dict) for v in values):
        return True
    first = type(values[0])
    return first in (str, int, float) and all(type(v) is first for v in values) and \
        any(not (isinstance(k, str) and _FIELD.match(k)) for k in node)


def _mask(root: Any, path: tuple) -> tuple:
    """Which steps of a concrete path are wildcards (collection keys, list indices)."""
    mask, node = [], root
    for depth, step in enumerate(path):
        mask.append(isinstance(node, list) or (depth > 0 and is_collection(node)))
        node = node[step]
    return tuple(mask)


def index_paths(root: Any, values: set[str], limit: int = MAX_PATHS) -> dict[str, list[tuple[tuple, tuple, bool]]]:
    """Every place (up to `limit`) where each of several strings occurs in the state, as a
    value or a dict key: (concrete path, wildcard mask, value-is-a-dict-key), in one walk
    (masks only for the hits; see `FirstPaths` for the mask)."""
    found: dict[str, list] = {v: [] for v in values}

    def walk(node: Any, path: tuple) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        is_dict = isinstance(node, dict)
        for k, v in items:
            if is_dict and k in found and len(found[k]) < limit:
                found[k].append(((*path, k), True))
            if isinstance(v, dict | list):
                walk(v, (*path, k))
            elif type(v) is str and v in found and len(found[v]) < limit:
                found[v].append(((*path, k), False))

    walk(root, ())
    return {v: [(p, _mask(root, p), is_key) for p, is_key in hits] for v, hits in found.items()}


class FirstPaths:
    """Where values first occur in parsed results: (concrete path, wildcard mask, value-is-a-dict-key).

    Each result is walked once (depth first, a dict's key before its value), on first use.
    The mask marks the path steps that are wildcards (keys of a collection, list indices);
    the top level is never a wildcard. A value is found as itself (the same type and
    value; a string also as a dict key) or `loose`, the way Phi matches values, as the text
    the model sees (the number 6500.0 is the string "6500"; keys do not count).
    """

    def __init__(self, parsed: list[Any]):
        self.parsed = parsed
        self.tables: dict[int, tuple[dict, dict]] = {}

    def first(self, i: int, value: Any, loose: bool = False) -> tuple[tuple, tuple, bool] | None:
        tables = self.tables.get(i)
        if tables is None:
            tables = self.tables[i] = self._walk(self.parsed[i])
        return tables[1].get(value_key(value)) if loose else tables[0].get((type(value), value))

    @staticmethod
    def _walk(root: Any) -> tuple[dict, dict]:
        same: dict = {}  # (type, value) -> first hit
        text: dict = {}  # value_key -> first hit (scalars other than booleans and null)

        def walk(node: Any, path: tuple, mask: tuple) -> None:
            if isinstance(node, dict):
                wild = bool(path) and is_collection(node)
                inner = (*mask, wild)
                for k, v in node.items():
                    if type(k) is str and (str, k) not in same:
                        same[(str, k)] = ((*path, k), inner, True)
                    walk(v, (*path, k), inner)
            elif isinstance(node, list):
                inner = (*mask, True)
                for i, v in enumerate(node):
                    walk(v, (*path, i), inner)
            else:
                kind, hit = type(node), (path, mask, False)
                same.setdefault((kind, node), hit)
                if kind is str:  # value_key of a string is itself
                    text.setdefault(node, hit)
                elif kind is not bool and node is not None:
                    text.setdefault(value_key(node), hit)

        walk(root, (), ())
        return same, text


def follow(root: Any, path: Iterable) -> Any:
    node = root
    for step in path:
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            node = node[step]
        else:
            raise KeyError(step)
    return node


def expand(root: Any, path: tuple, mask: tuple, is_key: bool, start: int = 0) -> list[tuple[tuple, Any]]:
    """Every (concrete path, value) matching the pattern from step `start` on (wildcards free)."""
    out: list[tuple[tuple, Any]] = []

    def walk(node: Any, i: int, done: tuple) -> None:
        if i == len(path):
            out.append((done, done[-1] if is_key else node))
            return
        if mask[i]:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, i + 1, (*done, k))
            elif isinstance(node, list):
                for j, v in enumerate(node):
                    walk(v, i + 1, (*done, j))
        elif isinstance(node, dict) and path[i] in node:
            walk(node[path[i]], i + 1, (*done, path[i]))
        elif isinstance(node, list) and isinstance(path[i], int) and path[i] < len(node):
            walk(node[path[i]], i + 1, (*done, path[i]))

    try:
        base = follow(root, path[:start])
    except KeyError:
        return out
    walk(base, start, tuple(path[:start]))
    return out


def parse_json(text: str) -> Any:
    """A tool result as JSON data when it is a JSON object or list, else None (plain text)."""
    if text[:1] in ("{", "["):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
    return None

