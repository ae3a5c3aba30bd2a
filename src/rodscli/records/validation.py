"""Records checked against their schema: one by one (JSONL input, every output), or a
Parquet batch at a time.

Per-record validation converts every token id of every record into the validator's own
values; for a native Parquet column the Arrow type already guarantees the JSON type, so its
remaining constraints (enum, bounds, lengths) are checked once per batch with Arrow
compute. Only JSON-text columns are validated value by value (against the property's own
sub-schema). A batch that fails any check is validated again record by record, so the
messages are the validator's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema_rs
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from rodscli import schemas
from rodscli.errors import InputError, RodsError, ValidationError
from rodscli.records.formats import ABSENT, EXTRA_COLUMN, drop_null_optionals, optional_fields
from rodscli.records.parquet import ParquetBatches, json_types

# ---------------------------------------------------------------------------------------
# one record at a time


def checked_jsonl(lines: Iterable[tuple[int, Any, str | None]], path: str, schema: str | None, validate: bool) -> Iterator[dict]:
    """The records of JSONL lines, null optionals dropped, validated unless told not to."""
    optional = optional_fields(schema)
    is_valid = schemas.validator(schema).is_valid if validate and schema else None
    for lineno, record, _ in lines:
        if not isinstance(record, dict):
            raise InputError(f"expected a JSON object, got {type(record).__name__}", where=f"{path}:{lineno}")
        record = drop_null_optionals(record, optional)
        if is_valid is not None and not is_valid(record):
            raise ValidationError([(f"{path}:{lineno}", f, m) for f, m in schemas.problems(schema, record)])
        yield record


def checked_outputs(records: Iterable[dict], schema: str | None, validate: bool, path: str) -> Iterator[dict]:
    """Records on their way to `path`, null optionals dropped, validated unless told not to."""
    optional = optional_fields(schema)
    is_valid = schemas.validator(schema).is_valid if validate and schema else None
    for i, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise RodsError(f"output record {i} is a {type(record).__name__}, not an object", where=path)
        record = drop_null_optionals(record, optional)
        if is_valid is not None and not is_valid(record):
            raise ValidationError([(f"{path}: output record {i}", f, m) for f, m in schemas.problems(schema, record)])
        yield record


# ---------------------------------------------------------------------------------------
# a Parquet batch at a time

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
    kinds = [k for k in json_types(prop) if k != "null"]
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
    if arr.null_count and not null_is_absent and "null" not in json_types(prop):
        return False
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        if [k for k in json_types(prop) if k != "null"] != ["array"] or set(prop) - _LIST_KEYS:
            return None
        items = prop.get("items", {})
        if not isinstance(items, dict) or "null" in json_types(items):
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


class BatchValidator:
    """Validates the batches of one Parquet file against schema `name`."""

    def __init__(self, name: str, reader: ParquetBatches):
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
                value = record.get(name, ABSENT)
                if value is ABSENT:
                    if required:
                        return False
                elif not is_valid(value):
                    return False
        return True
