"""The JSON Schemas in schemas/ (shipped in the package as rodscli/_schemas): load and compile.

One small extension keyword: `"x-extends": "rollout"` makes a schema carry every property
(and requirement) of another, so that `scored` and `buffer` records stay flat without
copying their base schema.
"""

from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any

import jsonschema_rs
import orjson

from rodscli.errors import OptionError


def _raw(name: str) -> dict:
    try:
        blob = resources.files("rodscli").joinpath("_schemas", f"{name}.json").read_bytes()
    except FileNotFoundError:
        raise OptionError(f"unknown schema {name!r}; choose one of: {', '.join(available())}") from None
    return orjson.loads(blob)


def available() -> list[str]:
    root = resources.files("rodscli").joinpath("_schemas")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


@functools.cache
def load(name: str) -> dict[str, Any]:
    """The schema `name`, with `x-extends` resolved (a fresh copy is not made: do not mutate)."""
    schema = _raw(name)
    base_name = schema.pop("x-extends", None)
    if base_name:
        base = load(base_name)
        merged = copy.deepcopy(schema)
        merged["properties"] = {**copy.deepcopy(base["properties"]), **schema["properties"]}
        merged["required"] = list(dict.fromkeys(base.get("required", []) + schema.get("required", [])))
        merged["x-extended-from"] = base_name
        schema = merged
    return schema


@functools.cache
def validator(name: str) -> Any:
    """A compiled 2020-12 validator for schema `name`."""
    return jsonschema_rs.Draft202012Validator(load(name))


def field_path(parts: list[Any] | tuple[Any, ...]) -> str:
    """JSON path of an instance location, e.g. ['calls', 2, 'name'] -> 'calls[2].name'."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(record)"


def _fields(error: Any) -> list[str]:
    """Field paths an error is about: a missing or unexpected field is named, not its parent."""
    path = list(error.instance_path)
    kind = error.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        return [field_path([*path, kind.property])]
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.AdditionalProperties) and kind.unexpected:
        return [field_path([*path, k]) for k in kind.unexpected]
    return [field_path(path)]


def problems(name: str, record: Any) -> list[tuple[str, str]]:
    """Every (field, message) by which `record` breaks schema `name`; empty when valid."""
    v = validator(name)
    if v.is_valid(record):
        return []
    return [(f, e.message) for e in v.iter_errors(record) for f in _fields(e)]


# The skill types (BFCL's multi-turn categories) in their order: the task schema's enum is
# the one list, read here for every stage that groups or checks by skill.
SKILLS: tuple[str, ...] = tuple(load("task")["properties"]["skill"]["enum"])


def skill_order(skill: str) -> tuple[int, str]:
    """Sort key for skills: the known ones in SKILLS order, then any other by name."""
    return (SKILLS.index(skill) if skill in SKILLS else len(SKILLS), skill)
