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
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import itertools
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rodscli import __version__, schemas
from rodscli.errors import InputError, RodsError, ValidationError

BATCH = 4096
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
_META_PROVENANCE = b"rods.provenance"
_META_SCHEMA = b"rods.schema"
_META_JSON_COLUMNS = b"rods.json_columns"
# Fields outside the Parquet layout (records written without a schema or with
# --no-validate) travel here as one JSON object per row, so that nothing is dropped.
EXTRA_COLUMN = "__rods_extra__"
# Marks "this field is absent" while a batch is turned from columns into records.
_ABSENT = object()

# ---------------------------------------------------------------------------------------
# formats and layout


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


_SCALARS = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}


def _types(prop: dict) -> list[str]:
    t = prop.get("type")
    types = [t] if isinstance(t, str) else list(t or [])
    if not types and "enum" in prop:
        kinds = {type(v) for v in prop["enum"] if v is not None}
        types = ["string"] if kinds == {str} else []
    return types


def _scalar_type(prop: dict) -> pa.DataType | None:
    types = [x for x in _types(prop) if x != "null"]
    return _SCALARS.get(types[0]) if len(types) == 1 else None


def arrow_type(prop: dict) -> tuple[pa.DataType, bool]:
    """Arrow type of a schema property, and whether it is stored as JSON text."""
    scalar = _scalar_type(prop)
    if scalar is not None:
        return scalar, False
    if _types(prop) == ["array"] and isinstance(prop.get("items"), dict):
        inner = _scalar_type(prop["items"])
        if inner is not None and "null" not in _types(prop["items"]):
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


@cache
def _optional_fields(schema: str | None) -> frozenset[str]:
    """Fields a record may leave out: absent and null are the same for them."""
    if not schema:
        return frozenset()
    loaded = schemas.load(schema)
    return frozenset(set(loaded["properties"]) - set(loaded.get("required", [])))


def _drop_null_optionals(record: Any, optional: frozenset[str]) -> Any:
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


# ---------------------------------------------------------------------------------------
# reading JSONL


def _open_lines(path: str) -> Iterator[bytes]:
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


def _iter_jsonl(path: str, keep_going: bool = False) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, record, None) per record; with keep_going a bad line gives (n, None, why)."""
    for lineno, line in enumerate(_open_lines(path), 1):
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


def _checked_jsonl(lines: Iterable[tuple[int, Any, str | None]], path: str, schema: str | None, validate: bool) -> Iterator[dict]:
    optional = _optional_fields(schema)
    is_valid = schemas.validator(schema).is_valid if validate and schema else None
    for lineno, record, _ in lines:
        if not isinstance(record, dict):
            raise InputError(f"expected a JSON object, got {type(record).__name__}", where=f"{path}:{lineno}")
        record = _drop_null_optionals(record, optional)
        if is_valid is not None and not is_valid(record):
            raise ValidationError([(f"{path}:{lineno}", f, m) for f, m in schemas.problems(schema, record)])
        yield record


# ---------------------------------------------------------------------------------------
# reading Parquet


def _parquet_file(path: str) -> pq.ParquetFile:
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


class _ParquetBatches:
    """Streams a Parquet file as lists of records, one row group batch at a time."""

    def __init__(self, path: str, schema: str | None):
        self.path = path
        self.pf = _parquet_file(path)
        meta = self.pf.schema_arrow.metadata or {}
        self.json_cols = set(orjson.loads(meta.get(_META_JSON_COLUMNS, b"[]"))) | {EXTRA_COLUMN}
        recorded = meta.get(_META_SCHEMA, b"").decode() or None
        # which fields may be absent: the layout the file was written with, else the reader's
        self.optional = _optional_fields(recorded if recorded in schemas.available() else schema)
        self.names = self.pf.schema_arrow.names

    def __iter__(self) -> Iterator[tuple[int, pa.RecordBatch, list[dict]]]:
        """(number of the batch's first row, the Arrow batch, its records)."""
        row = 1
        names = [n for n in self.names if n != EXTRA_COLUMN]
        try:
            for batch in self.pf.iter_batches(batch_size=BATCH):
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
                values = [_ABSENT if v is None else orjson.loads(v) for v in values]
            elif arr.null_count and name in self.optional:
                values = [_ABSENT if v is None else v for v in values]
            cols.append(values)
        records = [{k: v for k, v in zip(names, vals, strict=True) if v is not _ABSENT} for vals in zip(*cols, strict=True)]
        if not cols:  # a file of nothing but extras
            records = [{} for _ in range(batch.num_rows)]
        if EXTRA_COLUMN in self.names and batch.column(EXTRA_COLUMN).null_count < batch.num_rows:
            for record, extra in zip(records, batch.column(EXTRA_COLUMN).to_pylist(), strict=True):
                if extra is not None:
                    record.update(orjson.loads(extra))
        return records


# ---------------------------------------------------------------------------------------
# validating Parquet batches
#
# Per-record validation converts every token id of every record into the validator's own
# values; for a native column the Arrow type already guarantees the JSON type, so its
# remaining constraints (enum, bounds, lengths) are checked once per batch with Arrow
# compute. Only JSON-text columns are validated value by value (against the property's
# own sub-schema). A batch that fails any check is validated again record by record, so
# the messages are the validator's own.

_SCALAR_KEYS = {"type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                "minLength", "maxLength", "description", "title", "default", "examples", "$comment"}
_LIST_KEYS = {"type", "items", "minItems", "maxItems", "description", "title", "default", "examples", "$comment"}
_TOP_KEYS = {"$schema", "$id", "title", "description", "type", "additionalProperties", "required",
             "properties", "x-extends", "x-extended-from", "$comment"}
_KINDS = {"integer": pa.types.is_integer, "boolean": pa.types.is_boolean,
          "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
          "number": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t)}


def _scalar_ok(arr: pa.Array, prop: dict) -> bool:
    """True when every non-null value of `arr` satisfies the scalar constraints of `prop`."""
    if set(prop) - _SCALAR_KEYS:
        return False
    kinds = [k for k in _types(prop) if k != "null"]
    if len(kinds) != 1 or not _KINDS.get(kinds[0], lambda t: False)(arr.type):
        return False
    if arr.null_count == len(arr):
        return True
    if "enum" in prop and not set(pc.unique(arr.drop_null()).to_pylist()) <= set(prop["enum"]):
        return False
    bounds = [k for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in prop]
    if bounds:
        if pa.types.is_floating(arr.type) and pc.any(pc.is_nan(arr)).as_py():
            return False
        mm = pc.min_max(arr)
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        if ("minimum" in prop and lo < prop["minimum"]) or ("maximum" in prop and hi > prop["maximum"]):
            return False
        if ("exclusiveMinimum" in prop and lo <= prop["exclusiveMinimum"]) or (
            "exclusiveMaximum" in prop and hi >= prop["exclusiveMaximum"]
        ):
            return False
    if "minLength" in prop or "maxLength" in prop:
        mm = pc.min_max(pc.utf8_length(arr))
        if mm["min"].as_py() < prop.get("minLength", 0) or mm["max"].as_py() > prop.get("maxLength", float("inf")):
            return False
    return True


def _native_ok(arr: pa.Array, prop: dict, null_is_absent: bool) -> bool | None:
    """Batch check of a native column: True valid, False invalid somewhere, None can't tell."""
    if arr.null_count and not null_is_absent and "null" not in _types(prop):
        return False
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        if [k for k in _types(prop) if k != "null"] != ["array"] or set(prop) - _LIST_KEYS:
            return None
        items = prop.get("items", {})
        if not isinstance(items, dict) or "null" in _types(items):
            return None
        if "minItems" in prop or "maxItems" in prop:
            lengths = pc.list_value_length(arr).drop_null()
            if len(lengths):
                mm = pc.min_max(lengths)
                if mm["min"].as_py() < prop.get("minItems", 0) or mm["max"].as_py() > prop.get("maxItems", float("inf")):
                    return False
        flat = arr.flatten()
        if flat.null_count:
            return False
        return _scalar_ok(flat, items) or None
    return _scalar_ok(arr, prop) or None


class _BatchValidator:
    """Validates the batches of one Parquet file against schema `name`."""

    def __init__(self, name: str, reader: _ParquetBatches):
        self.name = name
        schema = schemas.load(name)
        props = schema.get("properties", {})
        self.required = set(schema.get("required", []))
        self.reader = reader
        names = set(reader.names) - {EXTRA_COLUMN}
        # a schema (or a file) this does not understand is validated record by record
        self.per_record = bool(
            set(schema) - _TOP_KEYS
            or (names - set(props) and schema.get("additionalProperties", True) is not True)
            or b"$ref" in orjson.dumps(schema)
        )
        self.props = {n: props[n] for n in names if n in props}
        self.missing_required = self.required - names
        self.value_validators: dict[str, Any] = {}

    def _value_validator(self, name: str) -> Any:
        if name not in self.value_validators:
            self.value_validators[name] = jsonschema_rs.Draft202012Validator(self.props[name])
        return self.value_validators[name]

    def batch_ok(self, batch: pa.RecordBatch, records: list[dict]) -> bool:
        """True only when every record of the batch is valid."""
        if self.per_record or self.missing_required:
            return False
        if EXTRA_COLUMN in batch.schema.names and batch.column(EXTRA_COLUMN).null_count < batch.num_rows:
            return False
        for name, prop in self.props.items():
            arr = batch.column(name)
            if name not in self.reader.json_cols:
                verdict = _native_ok(arr, prop, name in self.reader.optional)
                if verdict is not None:
                    if not verdict:
                        return False
                    continue
            is_valid = self._value_validator(name).is_valid
            required = name in self.required
            for record in records:
                value = record.get(name, _ABSENT)
                if value is _ABSENT:
                    if required:
                        return False
                elif not is_valid(value):
                    return False
        return True


# ---------------------------------------------------------------------------------------
# reading: the public API


def _where(path: str, n: int, fmt: str) -> str:
    return f"{path}:{n}" if fmt == "jsonl" else f"{path}:row {n}"


def iter_raw(path: str | Path, schema: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line or row number, record) of every record, without validation."""
    path = str(path)
    if file_format(path) == "parquet":
        for first, _, records in _ParquetBatches(path, schema):
            yield from enumerate(records, first)
    else:
        for lineno, record, _ in _iter_jsonl(path):
            yield lineno, _drop_null_optionals(record, _optional_fields(schema))


def read_records(path: str | Path, schema: str | None, validate: bool = True) -> Iterator[dict]:
    """Stream the records of a file; validate each against `schema` unless told not to.

    Raises InputError / ValidationError naming the file, the line (row) and the field.
    """
    path = str(path)
    fmt = file_format(path)
    check = validate and schema is not None
    if fmt == "parquet":
        reader = _ParquetBatches(path, schema)
        batches = _BatchValidator(schema, reader) if check else None
        for first, batch, records in reader:
            if batches is not None and not batches.batch_ok(batch, records):
                for n, record in enumerate(records, first):
                    bad = schemas.problems(schema, record)
                    if bad:
                        raise ValidationError([(_where(path, n, fmt), f, m) for f, m in bad])
            yield from records
        return
    yield from _checked_jsonl(_iter_jsonl(path), path, schema, validate)


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
    lines = _iter_jsonl(path)
    first = next(lines, None)
    name = guess_schema(first[1]) if first else None
    return name, _checked_jsonl(itertools.chain([first] if first else [], lines), path, name, validate)


def read_all(path: str | Path, schema: str | None, validate: bool = True) -> list[dict]:
    """Every record of a file, as a list (for inputs small enough to hold)."""
    return list(read_records(path, schema, validate))


def find_problems(path: str | Path, schema: str) -> Iterator[tuple[str, str, str]]:
    """Every (where, field, problem) in a file: keeps going past bad records."""
    path = str(path)
    fmt = file_format(path)
    if fmt == "jsonl":
        optional = _optional_fields(schema)
        for lineno, record, why in _iter_jsonl(path, keep_going=True):
            if why is not None:
                yield _where(path, lineno, fmt), "(record)", why
                continue
            for field, msg in schemas.problems(schema, _drop_null_optionals(record, optional)):
                yield _where(path, lineno, fmt), field, msg
        return
    reader = _ParquetBatches(path, schema)
    batches = _BatchValidator(schema, reader)
    for first, batch, records in reader:
        if batches.batch_ok(batch, records):
            continue
        for n, record in enumerate(records, first):
            for field, msg in schemas.problems(schema, record):
                yield _where(path, n, fmt), field, msg


def detect_schema(path: str | Path) -> str | None:
    """The schema name recorded in a file's provenance, if any."""
    path = str(path)
    if path == "-":
        return None
    if file_format(path) == "parquet":
        meta = _parquet_file(path).schema_arrow.metadata or {}
        name = meta.get(_META_SCHEMA)
        return name.decode() if name else None
    sidecar = _sidecar(path)
    if sidecar is not None:
        return sidecar.get("schema")
    return None


# ---------------------------------------------------------------------------------------
# provenance


def file_hash(path: str | Path) -> str | None:
    """blake2b of a file's bytes (None for stdin or a missing file)."""
    path = str(path)
    if path == "-" or not os.path.isfile(path):
        return None
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def provenance(inputs: Iterable[str | Path] = (), seed: int | None = None, **extra: Any) -> dict:
    """What made an output: rods version, command line, input hashes, seed, time, versions.

    `extra` adds fields (or replaces `command`, e.g. with the argv the CLI was given).
    """
    versions = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "trl", "polars", "pyarrow"):
        m = sys.modules.get(mod)
        if m is not None:
            versions[mod] = getattr(m, "__version__", "?")
    return {
        "rods_version": __version__,
        "command": sys.argv[:],
        "inputs": {str(p): file_hash(p) for p in inputs},
        "seed": seed,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions,
        **extra,
    }


def _sidecar(path: str) -> dict | None:
    sidecar = Path(path + ".meta.json")
    if not sidecar.exists():
        return None
    try:
        return orjson.loads(sidecar.read_bytes())
    except orjson.JSONDecodeError:
        raise InputError("provenance sidecar is not valid JSON", where=str(sidecar)) from None


def read_provenance(path: str | Path) -> dict | None:
    """The provenance written with a file (Parquet metadata or the JSONL sidecar), if any."""
    path = str(path)
    if path == "-":
        return None
    if file_format(path) == "parquet":
        raw = (_parquet_file(path).schema_arrow.metadata or {}).get(_META_PROVENANCE)
        return orjson.loads(raw) if raw else None
    sidecar = _sidecar(path)
    return sidecar.get("provenance") if sidecar is not None else None


# ---------------------------------------------------------------------------------------
# writing


def _dump(record: Any) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)


def _checked(records: Iterable[dict], schema: str | None, validate: bool, path: str) -> Iterator[dict]:
    optional = _optional_fields(schema)
    is_valid = schemas.validator(schema).is_valid if validate and schema else None
    for i, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise RodsError(f"output record {i} is a {type(record).__name__}, not an object", where=path)
        record = _drop_null_optionals(record, optional)
        if is_valid is not None and not is_valid(record):
            raise ValidationError([(f"{path}: output record {i}", f, m) for f, m in schemas.problems(schema, record)])
        yield record


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(path: str | Path, folder: bool = False) -> str:
    """Raise an InputError now when `path` could not be written at the end of a stage: an
    unknown file type, an existing directory where a file goes (or a file where a folder
    goes), a regular file among its parents, or a place this process cannot write in (tried
    with a temporary file, so read-only file systems count too). Creates nothing."""
    path = str(path)
    if path == "-":
        if folder:
            raise InputError("this output is a folder; stdout cannot hold it", where=path)
        return path
    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        raise InputError("exists and is not a folder", where=path)
    if not folder and target.is_dir():
        raise InputError("is a directory; give a file name", where=path)
    if not folder:
        file_format(path)
    place = target if folder and target.is_dir() else target.absolute().parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise InputError(f"{place} is a file, so nothing can be written under it", where=path)
    try:
        fd, probe = tempfile.mkstemp(dir=place, prefix=".rods-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write in {place}: {exc.strerror or exc}", where=path) from None
    return path


class _Atomic:
    """A temp file beside `path`, renamed over it on success, removed on failure."""

    def __init__(self, path: str):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        except OSError as exc:  # the place changed since check_output, or it was never checked
            raise InputError(f"cannot write here: {exc.strerror or exc}", where=path) from None
        # mkstemp makes the file private (0600); outputs get the usual permissions
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)

    def commit(self) -> None:
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:  # e.g. a directory was made at the path meanwhile
            raise InputError(f"cannot write here: {exc.strerror or exc}", where=self.path) from None

    def abort(self) -> None:
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def write_atomic_bytes(path: str | Path, data: bytes) -> None:
    """Write a whole (small) file atomically."""
    target = _Atomic(str(path))
    try:
        with open(target.tmp, "wb") as fh:
            fh.write(data)
        target.commit()
    except BaseException:
        target.abort()
        raise


def _write_jsonl(fh: io.BufferedIOBase, records: Iterable[dict]) -> int:
    n = 0
    buf: list[bytes] = []
    for record in records:
        buf.append(_dump(record))
        n += 1
        if len(buf) >= BATCH:
            buf.append(b"")
            fh.write(b"\n".join(buf))
            buf.clear()
    if buf:
        buf.append(b"")
        fh.write(b"\n".join(buf))
    return n


def _batches(records: Iterable[dict]) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for record in records:
        batch.append(record)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_parquet(tmp: str, records: Iterable[dict], schema: str | None, meta: dict[bytes, bytes], extras: bool,
                   where: str) -> int:
    batches = _batches(records)
    first_batch = next(batches, [])
    arrow_schema, json_cols = parquet_layout(schema, first_batch[0] if first_batch else None)
    if extras or schema is None:
        arrow_schema = arrow_schema.append(pa.field(EXTRA_COLUMN, pa.string()))
    meta = {**meta, _META_JSON_COLUMNS: orjson.dumps(sorted(json_cols))}
    arrow_schema = arrow_schema.with_metadata(meta)
    names = [n for n in arrow_schema.names if n != EXTRA_COLUMN]
    known = set(names)
    n = 0
    with pq.ParquetWriter(tmp, arrow_schema, compression="zstd") as writer:
        for batch in _chain(first_batch, batches):
            cols: dict[str, list] = {}
            for name in names:
                if name in json_cols:
                    cols[name] = [None if v is _ABSENT else _dump(v) for v in (r.get(name, _ABSENT) for r in batch)]
                else:
                    cols[name] = [r.get(name) for r in batch]
            if EXTRA_COLUMN in arrow_schema.names:
                cols[EXTRA_COLUMN] = [
                    _dump({k: r[k] for k in r if k not in known}) if r.keys() - known else None for r in batch
                ]
            try:
                table = pa.Table.from_pydict(cols, schema=arrow_schema)
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                raise RodsError(f"records {n + 1}..{n + len(batch)} do not fit the {schema} Parquet layout ({exc})", where=where) from None
            writer.write_table(table)
            n += len(batch)
    return n


def _chain(first: list[dict], rest: Iterator[list[dict]]) -> Iterator[list[dict]]:
    if first:
        yield first
    yield from rest


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
    checked = _checked(records, schema, validate, path)
    info = provenance_info if provenance_info is not None else provenance()
    if path == "-":
        n = _write_jsonl(sys.stdout.buffer, checked)
        sys.stdout.buffer.flush()
        return n
    target = _Atomic(path)
    sidecar = None
    try:
        if fmt == "parquet":
            meta = {_META_PROVENANCE: orjson.dumps(info), _META_SCHEMA: (schema or "").encode()}
            n = _write_parquet(target.tmp, checked, schema, meta, extras=not validate, where=path)
        else:
            with open(target.tmp, "wb") as fh:
                n = _write_jsonl(fh, checked)
            sidecar = orjson.dumps({"schema": schema, "records": n, "provenance": info}, option=orjson.OPT_INDENT_2)
        target.commit()
    except BaseException:
        target.abort()
        raise
    if sidecar is not None:
        write_atomic_bytes(path + ".meta.json", sidecar)
    return n
