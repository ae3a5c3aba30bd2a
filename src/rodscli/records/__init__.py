"""The one place that reads and writes record files.

Formats, chosen by extension: `.jsonl` (also `.ndjson`, `.json`, and `-` for stdin/stdout)
and `.parquet`. Both stream in batches of `BATCH` records, so a file never has to fit in
memory. In Parquet, scalar fields and lists of scalars are native columns (token ids,
log-probs and masks stay compact and fast); any other nested field (messages, calls,
free-form objects) is a JSON-text column, so every record round-trips exactly between the
two formats whatever its shape.

Absent and null: an optional field that is null is the same as an absent one (dropped on
read and on write), so both formats give the same records. In a JSON-text column a
Parquet null means "absent" and the text `null` means a JSON null.

Writes are atomic (a temp file in the target folder, then rename): a failed stage leaves
no partial output. Every output carries provenance: Parquet key-value metadata, or a
`<file>.meta.json` sidecar for JSONL.

This module is the API (reading, writing, and the names below re-exported); the work is in
`formats` (file types, absent-or-null), `jsonl`, `parquet` (layout, batches), `validation`,
`meta` (provenance, record type) and `output` (path checks, atomic writes).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from rodscli import schemas
from rodscli.errors import ValidationError
from rodscli.records.formats import (
    EXTRA_COLUMN,
    JSONL_SUFFIXES,
    drop_null_optionals,
    file_format,
    guess_schema,
    optional_fields,
    where,
)
from rodscli.records.jsonl import iter_jsonl, write_jsonl
from rodscli.records.meta import (
    detect_schema,
    file_hash,
    provenance,
    read_provenance,
    sidecar_bytes,
)
from rodscli.records.output import Atomic, check_output, write_atomic_bytes
from rodscli.records.parquet import (
    META_PROVENANCE,
    META_SCHEMA,
    ParquetBatches,
    arrow_type,
    no_gc,
    parquet_layout,
    write_parquet,
)
from rodscli.records.validation import BatchValidator, checked_jsonl, checked_outputs

__all__ = [
    "BATCH", "EXTRA_COLUMN", "JSONL_SUFFIXES", "arrow_type", "check_output", "detect_schema", "file_format",
    "file_hash", "find_problems", "guess_schema", "iter_raw", "no_gc", "open_records", "parquet_layout",
    "provenance", "read_all", "read_provenance", "read_records", "write_atomic_bytes", "write_records",
]

# Records per Parquet batch (read and written) and per JSONL write. Read here at each call,
# so a test can make it small with `monkeypatch.setattr(records, "BATCH", 16)`.
BATCH = 4096

# ---------------------------------------------------------------------------------------
# reading


def iter_raw(path: str | Path, schema: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line or row number, record) of every record, without validation."""
    path = str(path)
    if file_format(path) == "parquet":
        for first, _, records in ParquetBatches(path, schema, BATCH):
            yield from enumerate(records, first)
    else:
        for lineno, record, _ in iter_jsonl(path):
            yield lineno, drop_null_optionals(record, optional_fields(schema))


def read_records(path: str | Path, schema: str | None, validate: bool = True,
                 columns: list[str] | None = None) -> Iterator[dict]:
    """Stream the records of a file; validate each against `schema` unless told not to.

    `columns` (only with validate=False): a Parquet file gives only these fields of each
    record (a JSONL file is read whole); for readers of a few fields of large records.
    Raises InputError / ValidationError naming the file, the line (row) and the field.
    """
    path = str(path)
    fmt = file_format(path)
    check = validate and schema is not None
    if columns is not None and check:
        raise ValueError("columns= reads part of each record: it cannot be validated")
    if fmt == "parquet":
        reader = ParquetBatches(path, schema, BATCH, columns)
        batches = BatchValidator(schema, reader) if check else None
        for first, batch, records in reader:
            if batches is not None and not batches.batch_ok(batch, records):
                for n, record in enumerate(records, first):
                    bad = schemas.problems(schema, record)
                    if bad:
                        raise ValidationError([(where(path, n, fmt), f, m) for f, m in bad])
            yield from records
        return
    yield from checked_jsonl(iter_jsonl(path), path, schema, validate)


def open_records(path: str | Path, schema: str | None = None, validate: bool = True) -> tuple[str | None, Iterator[dict]]:
    """The record type of a file and its records (streamed, validated unless told not to).

    The type is `schema` when given, else the one recorded in the file's provenance, else
    the one schema that fits the first record (see `guess_schema`); None when none fits.
    """
    path = str(path)
    name = schema or detect_schema(path)
    if name is not None:
        return name, read_records(path, name, validate)
    if path != "-":
        first = next(iter_raw(path), (0, None))[1]
        name = guess_schema(first)
        return name, read_records(path, name, validate)
    # stdin is read once: guess from its first record, then go on with the same stream
    lines = iter_jsonl(path)
    first = next(lines, None)
    name = guess_schema(first[1]) if first else None
    return name, checked_jsonl(itertools.chain([first] if first else [], lines), path, name, validate)


def read_all(path: str | Path, schema: str | None, validate: bool = True, columns: list[str] | None = None) -> list[dict]:
    """Every record of a file, as a list (for inputs small enough to hold); `columns` as in read_records."""
    return list(read_records(path, schema, validate, columns))


def find_problems(path: str | Path, schema: str) -> Iterator[tuple[str, str, str]]:
    """Every (where, field, problem) in a file: keeps going past bad records."""
    path = str(path)
    fmt = file_format(path)
    if fmt == "jsonl":
        optional = optional_fields(schema)
        for lineno, record, why in iter_jsonl(path, keep_going=True):
            if why is not None:
                yield where(path, lineno, fmt), "(record)", why
                continue
            for field, msg in schemas.problems(schema, drop_null_optionals(record, optional)):
                yield where(path, lineno, fmt), field, msg
        return
    reader = ParquetBatches(path, schema, BATCH)
    batches = BatchValidator(schema, reader)
    for first, batch, records in reader:
        if batches.batch_ok(batch, records):
            continue
        for n, record in enumerate(records, first):
            for field, msg in schemas.problems(schema, record):
                yield where(path, n, fmt), field, msg


# ---------------------------------------------------------------------------------------
# writing


def write_records(
    path: str | Path,
    records: Iterable[dict],
    schema: str | None,
    *,
    provenance_info: dict | None = None,
    validate: bool = True,
) -> int:
    """Write records atomically (or JSONL to stdout for `-`); returns how many were written.

    Parquet gets the provenance and the schema name as key-value metadata; a JSONL file gets
    a `<path>.meta.json` sidecar with both.
    """
    path = str(path)
    fmt = file_format(path)
    if schema is not None:
        schemas.load(schema)  # an unknown schema is an error before anything is written
    checked = checked_outputs(records, schema, validate, path)
    info = provenance_info if provenance_info is not None else provenance()
    if path == "-":
        n = write_jsonl(sys.stdout.buffer, checked, BATCH)
        sys.stdout.buffer.flush()
        return n
    target = Atomic(path)
    sidecar = None
    try:
        if fmt == "parquet":
            meta = {META_PROVENANCE: orjson.dumps(info), META_SCHEMA: (schema or "").encode()}
            n = write_parquet(target.tmp, checked, schema, meta, extras=not validate, where=path, batch_size=BATCH)
        else:
            with open(target.tmp, "wb") as fh:
                n = write_jsonl(fh, checked, BATCH)
            sidecar = sidecar_bytes(schema, n, info)
        target.commit()
    except BaseException:
        target.abort()
        raise
    if sidecar is not None:
        write_atomic_bytes(path + ".meta.json", sidecar)
    return n
