"""What is written with a record file: its provenance (rods version, command, input hashes,
seed, time, library versions) and its record type. Parquet keeps both as key-value
metadata; a JSONL file has a `<file>.meta.json` sidecar."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from rodscli import __version__
from rodscli.errors import InputError
from rodscli.records.formats import file_format
from rodscli.records.parquet import META_PROVENANCE, META_SCHEMA, parquet_file


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


def sidecar_bytes(schema: str | None, n: int, info: dict) -> bytes:
    """The `.meta.json` sidecar of a JSONL file of `n` records."""
    return orjson.dumps({"schema": schema, "records": n, "provenance": info}, option=orjson.OPT_INDENT_2)


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
        raw = (parquet_file(path).schema_arrow.metadata or {}).get(META_PROVENANCE)
        return orjson.loads(raw) if raw else None
    sidecar = _sidecar(path)
    return sidecar.get("provenance") if sidecar is not None else None


def detect_schema(path: str | Path) -> str | None:
    """The schema name recorded in a file's provenance, if any."""
    path = str(path)
    if path == "-":
        return None
    if file_format(path) == "parquet":
        meta = parquet_file(path).schema_arrow.metadata or {}
        name = meta.get(META_SCHEMA)
        return name.decode() if name else None
    sidecar = _sidecar(path)
    if sidecar is not None:
        return sidecar.get("schema")
    return None
