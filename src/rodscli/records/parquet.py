"""Parquet records: the column layout of a record type, and streaming a file in batches.

Scalar fields and lists of scalars are native columns (token ids, log-probs and masks stay
compact and fast); any other nested field (messages, calls, free-form objects) is a
JSON-text column, so every record round-trips exactly with JSONL whatever its shape. In a
JSON-text column a Parquet null means "absent" and the text `null` means a JSON null.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterable, Iterator

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from rodscli import schemas
from rodscli.errors import InputError, RodsError
from rodscli.records.formats import ABSENT, EXTRA_COLUMN, optional_fields
from rodscli.records.jsonl import dump

# key-value metadata of a file written by rods
META_PROVENANCE = b"rods.provenance"
META_SCHEMA = b"rods.schema"
META_JSON_COLUMNS = b"rods.json_columns"

# ---------------------------------------------------------------------------------------
# layout

_SCALARS = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}


def json_types(prop: dict) -> list[str]:
    """The JSON types a schema property allows (a string enum counts as "string")."""
    t = prop.get("type")
    types = [t] if isinstance(t, str) else list(t or [])
    if not types and "enum" in prop:
        kinds = {type(v) for v in prop["enum"] if v is not None}
        types = ["string"] if kinds == {str} else []
    return types


def _scalar_type(prop: dict) -> pa.DataType | None:
    types = [x for x in json_types(prop) if x != "null"]
    return _SCALARS.get(types[0]) if len(types) == 1 else None


def arrow_type(prop: dict) -> tuple[pa.DataType, bool]:
    """Arrow type of a schema property, and whether it is stored as JSON text."""
    scalar = _scalar_type(prop)
    if scalar is not None:
        return scalar, False
    if json_types(prop) == ["array"] and isinstance(prop.get("items"), dict):
        inner = _scalar_type(prop["items"])
        if inner is not None and "null" not in json_types(prop["items"]):
            return pa.list_(inner), False
    return pa.string(), True


def parquet_layout(schema_name: str | None, first: dict | None = None) -> tuple[pa.Schema, set[str]]:
    """Arrow schema and JSON-text columns for a record type (or, with no schema, from a record)."""
    if schema_name is None:
        names = list(first or {})
        return pa.schema([pa.field(n, pa.string()) for n in names]), set(names)
    props = schemas.load(schema_name)["properties"]
    fields, json_cols = [], set()
    for name, prop in props.items():
        typ, is_json = arrow_type(prop)
        fields.append(pa.field(name, typ, nullable=True))
        if is_json:
            json_cols.add(name)
    return pa.schema(fields), json_cols


# ---------------------------------------------------------------------------------------
# reading


def parquet_file(path: str) -> pq.ParquetFile:
    if path == "-":
        raise InputError("stdin is read as JSONL; Parquet needs a file", where=path)
    if not os.path.exists(path):
        raise InputError("no such file", where=path)
    if os.path.isdir(path):
        raise InputError("is a directory, expected a record file", where=path)
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"not a readable Parquet file ({exc})", where=path) from None


def _column_values(arr: pa.Array) -> list:
    """A column as Python values; lists of numbers go through numpy (several times faster)."""
    t = arr.type
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
        pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type) or pa.types.is_boolean(t.value_type)
    ) and arr.values.null_count == 0:
        # offsets index into the whole values buffer (they already include any slice offset)
        flat = arr.values.to_numpy(zero_copy_only=False).tolist()
        off = arr.offsets.to_numpy().tolist()
        out = [flat[a:b] for a, b in zip(off, off[1:], strict=False)]
        if arr.null_count:
            out = [None if null else v for v, null in zip(out, arr.is_null().to_pylist(), strict=True)]
        return out
    return arr.to_pylist()


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while a batch of records is built: the records
    are acyclic, and tens of thousands of fresh containers would otherwise trigger a
    collection every few hundred allocations (reading Parquet got 2-3x slower)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class ParquetBatches:
    """Streams a Parquet file as lists of records, `batch` rows at a time.

    `columns`: read only these fields (those the file has; the extras column is then not
    read), for a caller that needs a few fields of large records; None reads everything.
    """

    def __init__(self, path: str, schema: str | None, batch: int, columns: list[str] | None = None):
        self.path = path
        self.batch = batch
        self.pf = parquet_file(path)
        meta = self.pf.schema_arrow.metadata or {}
        self.json_cols = set(orjson.loads(meta.get(META_JSON_COLUMNS, b"[]"))) | {EXTRA_COLUMN}
        recorded = meta.get(META_SCHEMA, b"").decode() or None
        # which fields may be absent: the layout the file was written with, else the reader's
        self.optional = optional_fields(recorded if recorded in schemas.available() else schema)
        self.names = self.pf.schema_arrow.names
        if columns is not None:
            wanted = set(columns)
            self.names = [n for n in self.names if n in wanted]
        self.columns = None if columns is None else self.names

    def __iter__(self) -> Iterator[tuple[int, pa.RecordBatch, list[dict]]]:
        """(number of the batch's first row, the Arrow batch, its records)."""
        row = 1
        names = [n for n in self.names if n != EXTRA_COLUMN]
        try:
            for batch in self.pf.iter_batches(batch_size=self.batch, columns=self.columns):
                with no_gc():
                    records = self._records(batch, names)
                yield row, batch, records
                row += batch.num_rows
        except (pa.ArrowException, OSError, orjson.JSONDecodeError) as exc:
            raise InputError(f"corrupt Parquet data after row {row - 1} ({exc})", where=self.path) from None

    def _records(self, batch: pa.RecordBatch, names: list[str]) -> list[dict]:
        """The records of one batch: columns to Python values, JSON-text columns parsed."""
        cols = []
        for name in names:
            arr = batch.column(name)
            values = _column_values(arr)
            if name in self.json_cols:
                values = [ABSENT if v is None else orjson.loads(v) for v in values]
            elif arr.null_count and name in self.optional:
                values = [ABSENT if v is None else v for v in values]
            cols.append(values)
        records = [{k: v for k, v in zip(names, vals, strict=True) if v is not ABSENT} for vals in zip(*cols, strict=True)]
        if not cols:  # a file of nothing but extras
            records = [{} for _ in range(batch.num_rows)]
        if EXTRA_COLUMN in self.names and batch.column(EXTRA_COLUMN).null_count < batch.num_rows:
            for record, extra in zip(records, batch.column(EXTRA_COLUMN).to_pylist(), strict=True):
                if extra is not None:
                    record.update(orjson.loads(extra))
        return records


# ---------------------------------------------------------------------------------------
# writing


def _batches(records: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _chain(first: list[dict], rest: Iterator[list[dict]]) -> Iterator[list[dict]]:
    if first:
        yield first
    yield from rest


def write_parquet(tmp: str, records: Iterable[dict], schema: str | None, meta: dict[bytes, bytes], extras: bool,
                  where: str, batch_size: int) -> int:
    """Write records to `tmp` in the layout of `schema` (fields outside it in the extras
    column when `extras`), `batch_size` rows per row group; returns how many were written."""
    batches = _batches(records, batch_size)
    first_batch = next(batches, [])
    arrow_schema, json_cols = parquet_layout(schema, first_batch[0] if first_batch else None)
    if extras or schema is None:
        arrow_schema = arrow_schema.append(pa.field(EXTRA_COLUMN, pa.string()))
    meta = {**meta, META_JSON_COLUMNS: orjson.dumps(sorted(json_cols))}
    arrow_schema = arrow_schema.with_metadata(meta)
    names = [n for n in arrow_schema.names if n != EXTRA_COLUMN]
    known = set(names)
    n = 0
    with pq.ParquetWriter(tmp, arrow_schema, compression="zstd") as writer:
        for batch in _chain(first_batch, batches):
            cols: dict[str, list] = {}
            for name in names:
                if name in json_cols:
                    cols[name] = [None if v is ABSENT else dump(v) for v in (r.get(name, ABSENT) for r in batch)]
                else:
                    cols[name] = [r.get(name) for r in batch]
            if EXTRA_COLUMN in arrow_schema.names:
                cols[EXTRA_COLUMN] = [
                    dump({k: r[k] for k in r if k not in known}) if r.keys() - known else None for r in batch
                ]
            try:
                table = pa.Table.from_pydict(cols, schema=arrow_schema)
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                raise RodsError(f"records {n + 1}..{n + len(batch)} do not fit the {schema} Parquet layout ({exc})", where=where) from None
            writer.write_table(table)
            n += len(batch)
    return n
