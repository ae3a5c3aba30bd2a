"""What both record formats share: the file type from its name, the absent-or-null rule,
and the record type guessed from a record."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from rodscli import schemas
from rodscli.errors import InputError

JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
# Fields outside the Parquet layout (records written without a schema or with
# --no-validate) travel here as one JSON object per row, so that nothing is dropped.
EXTRA_COLUMN = "__rods_extra__"
# Marks "this field is absent" while a batch is turned from columns into records.
ABSENT = object()


def file_format(path: str | Path) -> str:
    """'jsonl' or 'parquet', from the file name; `-` is JSONL."""
    if str(path) == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    raise InputError(f"unknown file type {suffix!r}: use .jsonl or .parquet (or - for JSONL on stdin/stdout)", where=str(path))


def where(path: str, n: int, fmt: str) -> str:
    """How an error names a record: `file:line` for JSONL, `file:row n` for Parquet."""
    return f"{path}:{n}" if fmt == "jsonl" else f"{path}:row {n}"


@cache
def optional_fields(schema: str | None) -> frozenset[str]:
    """Fields a record may leave out: absent and null are the same for them."""
    if not schema:
        return frozenset()
    loaded = schemas.load(schema)
    return frozenset(set(loaded["properties"]) - set(loaded.get("required", [])))


def drop_null_optionals(record: Any, optional: frozenset[str]) -> Any:
    if optional and isinstance(record, dict) and any(record.get(k, 0) is None for k in optional):
        return {k: v for k, v in record.items() if v is not None or k not in optional}
    return record


def guess_schema(record: Any) -> str | None:
    """The one schema whose required fields the record has and whose fields cover it."""
    if not isinstance(record, dict):
        return None
    keys = set(record)
    fits = []
    for name in schemas.available():
        s = schemas.load(name)
        if set(s.get("required", [])) <= keys <= set(s.get("properties", {})):
            fits.append(name)
    return fits[0] if len(fits) == 1 else None
