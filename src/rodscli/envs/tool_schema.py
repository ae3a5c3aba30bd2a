"""OpenAI tool schemas from Python methods: the summary and argument descriptions from a
Google-style docstring, the argument types from the type hints.

Hints become JSON Schema as far as they say something a model can use: scalars, `Literal`
and `Enum` (an `enum`), `Optional`/unions, lists, tuples and sets (`items`), dicts
(`additionalProperties`), and structured types spelled out field by field: pydantic models,
dataclasses and TypedDicts (`properties`, `required`, field descriptions). A hint it cannot
read puts no constraint on the argument.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import types
import typing
from typing import Any

_PY_TO_JSON = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
               tuple: "array", set: "array", frozenset: "array", dict: "object", type(None): "null"}
_ARG_LINE = re.compile(r"^\s*(\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_MAX_DEPTH = 8  # a self-referencing model stops being spelled out here


def _pydantic_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and hasattr(annotation, "model_fields") and hasattr(annotation, "model_validate")


def _object_schema(fields: list[tuple[str, Any, bool, str | None]], depth: int, doc: str | None) -> dict:
    """{"type": "object"} with one property per (name, hint, required, description)."""
    props, required = {}, []
    for name, hint, is_required, description in fields:
        prop = json_type(hint, depth + 1)
        if description:
            prop["description"] = description
        props[name] = prop
        if is_required:
            required.append(name)
    out: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if doc:
        out["description"] = doc
    return out


def _model_fields(model: type) -> list[tuple[str, Any, bool, str | None]]:
    return [(f.alias or name, f.annotation, f.is_required(), f.description) for name, f in model.model_fields.items()]


def _dataclass_fields(cls: type) -> list[tuple[str, Any, bool, str | None]]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = {}
    return [(f.name, hints.get(f.name, f.type), f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, None)
            for f in dataclasses.fields(cls)]


def _typeddict_fields(cls: type) -> list[tuple[str, Any, bool, str | None]]:
    hints = typing.get_type_hints(cls)
    return [(name, hint, name in cls.__required_keys__, None) for name, hint in hints.items()]


def _union(members: list[Any], depth: int) -> dict:
    schemas = []
    for m in members:
        s = json_type(m, depth)
        if s not in schemas:
            schemas.append(s)
    # `Model | dict` is how a toolkit says "the model, or its JSON": the model's schema says more
    if any(s.get("properties") for s in schemas):
        schemas = [s for s in schemas if s != {"type": "object"}]
    if not schemas or {} in schemas:
        return {}
    if len(schemas) == 1:
        return schemas[0]
    if all(set(s) == {"type"} and isinstance(s["type"], str) for s in schemas):
        return {"type": [s["type"] for s in schemas]}
    return {"anyOf": schemas}


def json_type(annotation: Any, depth: int = 0) -> dict:
    """JSON-Schema fragment for a Python annotation (best effort; unknown -> no constraint)."""
    if annotation is inspect.Parameter.empty or annotation is Any or depth > _MAX_DEPTH:
        return {}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        out = json_type(args[0], depth)
        for extra in args[1:]:  # pydantic's Field(description=...) inside Annotated
            description = getattr(extra, "description", None)
            if isinstance(description, str) and description:
                out = {**out, "description": description}
        return out
    if origin in (typing.Union, types.UnionType):
        return _union([a for a in args if a is not type(None)], depth)
    if origin is typing.Literal:
        values = list(args)
        return {"type": _PY_TO_JSON.get(type(values[0]), "string"), "enum": values}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = [m.value for m in annotation]
        return {"type": _PY_TO_JSON.get(type(values[0]), "string"), "enum": values} if values else {}
    if _pydantic_model(annotation):
        return _object_schema(_model_fields(annotation), depth, inspect.cleandoc(annotation.__doc__ or "") or None)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _object_schema(_dataclass_fields(annotation), depth, None)
    if isinstance(annotation, type) and typing.is_typeddict(annotation):
        return _object_schema(_typeddict_fields(annotation), depth, None)
    base = origin or annotation
    t = _PY_TO_JSON.get(base)
    if t is None:
        return {}
    out: dict[str, Any] = {"type": t}
    if t == "array" and args:
        item = _union([a for a in args if a is not Ellipsis], depth + 1) if base is tuple else json_type(args[0], depth + 1)
        if item:
            out["items"] = item
    elif t == "object" and len(args) == 2:
        value = json_type(args[1], depth + 1)
        if value:
            out["additionalProperties"] = value
    return out


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Summary and per-argument descriptions of a Google-style docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary, args, section = [], {}, None
    for line in lines:
        stripped = line.strip()
        if stripped.rstrip(":") in ("Args", "Arguments", "Parameters", "Returns", "Raises", "Yields", "Example", "Examples"):
            section = stripped.rstrip(":")
            continue
        if section is None:
            if stripped:
                summary.append(stripped)
        elif section in ("Args", "Arguments", "Parameters"):
            m = _ARG_LINE.match(line)
            if m:
                args[m.group(1)] = m.group(3).strip()
    return " ".join(summary), args


def method_schema(name: str, method: Any) -> dict:
    """OpenAI function schema of a method, from its signature and docstring."""
    summary, arg_docs = parse_docstring(method.__doc__ or "")
    try:
        hints = typing.get_type_hints(method, include_extras=True)
    except Exception:
        hints = {}
    props, required = {}, []
    for pname, param in inspect.signature(method).parameters.items():
        if pname == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        prop = json_type(hints.get(pname, param.annotation))
        if pname in arg_docs:
            prop["description"] = arg_docs[pname]
        if param.default is inspect.Parameter.empty:
            required.append(pname)
        props[pname] = prop
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": summary,
            "parameters": {"type": "object", "properties": props, "required": required},
        },
    }
