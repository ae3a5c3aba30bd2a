"""Python-class environments: a class's public documented methods are its tools, its public
attributes its state (the convention of BFCL's simulators and of TRL's environment_factory).

`ClassEpisode` is the shared core: the built-in domains and BFCL run on it too. A tool call
can only reach a method in the episode's tool list (no other attribute, no dunder, no text
evaluated): the name is looked up in a dict built when the episode starts.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import pickle
import re
import types
import typing
from typing import Any

import orjson

from rodscli.envs.base import Environment, Episode
from rodscli.errors import InputError

_PY_TO_JSON = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
               tuple: "array", set: "array", dict: "object", type(None): "null"}
_CONTAINERS = (list, dict)
_ARG_LINE = re.compile(r"^\s*(\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")


def json_type(annotation: Any) -> dict:
    """JSON-Schema fragment for a Python annotation (best effort; unknown -> no constraint)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return json_type(args[0]) if len(args) == 1 else {}
    if origin is typing.Literal:
        values = list(typing.get_args(annotation))
        return {"type": _PY_TO_JSON.get(type(values[0]), "string"), "enum": values}
    base = origin or annotation
    t = _PY_TO_JSON.get(base)
    if t is None:
        return {}
    out: dict[str, Any] = {"type": t}
    if t == "array" and typing.get_args(annotation):
        item = json_type(typing.get_args(annotation)[0])
        if item:
            out["items"] = item
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
        hints = typing.get_type_hints(method)
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


@functools.cache
def _public_method_names(cls: type) -> tuple[str, ...]:
    # inspecting a class costs ~50 us: once per class, not once per episode
    return tuple(
        name for name, member in inspect.getmembers(cls, predicate=inspect.isfunction)
        if not name.startswith("_") and (member.__doc__ or "").strip()
    )


def public_methods(obj: Any) -> dict[str, Any]:
    """Public, documented methods defined by the object's class (not by `object`)."""
    return {name: getattr(obj, name) for name in _public_method_names(type(obj))}


def to_json(value: Any, depth: int = 0) -> Any:
    """Plain JSON data for a state value (sets sorted, objects by their public attributes)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value else "NaN"
    if depth > 32:
        return repr(value)
    if isinstance(value, dict):
        return {str(k): to_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v, depth + 1) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((to_json(v, depth + 1) for v in value), key=repr)
    if hasattr(value, "__dict__"):
        return {"__class__": type(value).__name__, **public_state(value, depth + 1)}
    return str(value)


def public_state(obj: Any, depth: int = 0) -> dict:
    """An object's public attributes as JSON data (its comparable state)."""
    return {k: to_json(v, depth + 1) for k, v in sorted(vars(obj).items()) if not k.startswith("_")}


class ClassEpisode(Episode):
    """An episode over one or more live objects; their public methods are the tools."""

    def __init__(self, instances: dict[str, Any], schemas: list[dict] | None = None):
        self.instances = instances
        self._methods: dict[str, Any] = {}
        for obj in instances.values():
            for name, bound in public_methods(obj).items():
                self._methods.setdefault(name, bound)
        if schemas is None:
            schemas = [method_schema(n, m) for n, m in sorted(self._methods.items())]
        # only tools that exist as methods are callable, whatever the schemas say
        self._schemas = [s for s in schemas if s["function"]["name"] in self._methods]

    def tools(self) -> list[dict]:
        return self._schemas

    def invoke(self, name: str, arguments: dict) -> Any:
        # Simulators may keep argument objects in their state (BFCL's post_tweet stores the
        # `mentions` list, which `mention` later extends): containers are passed as private
        # copies, so that a call never writes into the caller's record (a task, a rollout log).
        for value in arguments.values():
            if isinstance(value, _CONTAINERS):
                arguments = copy.deepcopy(arguments)
                break
        return self._methods[name](**arguments)

    def snapshot(self) -> dict:
        return {cls: public_state(obj) for cls, obj in sorted(self.instances.items())}

    # synthesis hooks (see Episode): each object is an owner, its attributes its state
    state_survives_close = True

    def state_owners(self) -> list[str]:
        return list(self.instances)

    def tool_owner(self, name: str) -> str:
        method = self._methods.get(name)
        owner = getattr(method, "__self__", None)
        return "" if owner is None else type(owner).__name__

    def save_state(self, owner: str) -> bytes | None:
        try:  # pickle keeps cycles (a folder's parent link), objects and private attributes
            return b"p" + pickle.dumps(vars(self.instances[owner]), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an unpicklable attribute (a lock, a handle): no undo for this owner
            return None

    def restore_state(self, owner: str, blob: bytes) -> None:
        # b"j": JSON data (see BuiltinEpisode.save_state), b"p": a pickle
        state = orjson.loads(blob[1:]) if blob[:1] == b"j" else pickle.loads(blob[1:])
        attrs = vars(self.instances[owner])
        attrs.clear()
        attrs.update(state)

    def state_view(self, owner: str) -> Any:
        return public_state(self.instances[owner])


def import_class(path: str) -> type:
    """Import 'package.module:Class' (or 'package.module.Class')."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InputError(f"cannot import environment class {path!r} ({exc})", field="env_config.classes") from None


def load_state(obj: Any, config: dict, loader: str | None) -> None:
    """Put an object in its initial state: its loader method if named, else set attributes."""
    config = copy.deepcopy(config)  # the object's state is its own: never the task record's dicts
    if loader:
        if loader.startswith("__") or not callable(getattr(obj, loader, None)):
            raise InputError(f"{type(obj).__name__} has no loader method {loader!r}", field="env_config.loader")
        getattr(obj, loader)(config)
        return
    for key, value in config.items():
        if key.startswith("_"):
            raise InputError(f"initial state may not set private attribute {key!r}", field="initial_state")
        setattr(obj, key, value)


class PyClassEnvironment(Environment):
    """Any importable class. Task fields used:

    env_config = {"classes": ["pkg.mod:Class", ...], "loader": "load_scenario" | null}
    initial_state = {"Class": {...config or attributes...}, ...}
    """

    family = "pyclass"

    def reset(self, task: dict) -> Episode:
        cfg = task.get("env_config") or {}
        classes = cfg.get("classes") or []
        if not classes:
            raise InputError("pyclass task needs env_config.classes", where=task.get("id"), field="env_config.classes")
        instances = {}
        for path in classes:
            cls = import_class(path)
            obj = cls()
            load_state(obj, (task.get("initial_state") or {}).get(cls.__name__, {}), cfg.get("loader"))
            instances[cls.__name__] = obj
        return ClassEpisode(instances)
