"""JSONL records: one JSON object per line, read line by line (a file or stdin) and
written in blocks of `batch` lines."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from rodscli.errors import InputError


def open_lines(path: str) -> Iterator[bytes]:
    if path == "-":
        yield from sys.stdin.buffer
        return
    try:
        fh = open(path, "rb")  # closed by the `with` below, once the lines are consumed
    except FileNotFoundError:
        raise InputError("no such file", where=path) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a record file", where=path) from None
    except PermissionError:
        raise InputError("permission denied", where=path) from None
    with fh:
        yield from fh


def iter_jsonl(path: str, keep_going: bool = False) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, record, None) per record; with keep_going a bad line gives (n, None, why)."""
    for lineno, line in enumerate(open_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if keep_going:
                yield lineno, None, f"not valid JSON ({exc})"
                continue
            raise InputError(f"not valid JSON ({exc})", where=f"{path}:{lineno}") from None
        yield lineno, record, None


def dump(record: Any) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)


def write_jsonl(fh: io.BufferedIOBase, records: Iterable[dict], batch: int) -> int:
    """Write records as lines, `batch` lines per write; returns how many were written."""
    n = 0
    buf: list[bytes] = []
    for record in records:
        buf.append(dump(record))
        n += 1
        if len(buf) >= batch:
            buf.append(b"")
            fh.write(b"\n".join(buf))
            buf.clear()
    if buf:
        buf.append(b"")
        fh.write(b"\n".join(buf))
    return n
