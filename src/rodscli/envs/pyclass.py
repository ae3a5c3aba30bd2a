"""Python-class environments: a class's tool methods are its tools, its public attributes
its state (the convention of BFCL's simulators, TRL's environment_factory and tau2's toolkits).

`ClassEpisode` is the shared core: the built-in domains and BFCL run on it too. A tool call
can only reach a method in the episode's tool list (no other attribute, no dunder, no text
evaluated): the name is looked up in a dict built when the episode starts.

`PyClassEnvironment` takes a toolkit as it is (docs/tau2.md): constructor arguments, values
built by an importable function (`{"$call": "pkg.mod:function", "args": [...]}`, built once
per process and copied on write per episode), a loader method or function, a tool selector
(a marker attribute such as tau2's `@is_tool`, a list of names, or a predicate), argument
schemas from type hints, and results as JSON (pydantic models, dataclasses, enums).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import importlib
import inspect
import pickle
import typing
from typing import Any

import orjson

from rodscli.envs.base import Environment, Episode, state_hash
from rodscli.envs.copy_on_write import holds_copy_on_write, private_copy, state_digest
from rodscli.envs.tool_schema import json_type, method_schema, parse_docstring
from rodscli.errors import InputError

__all__ = ["ClassEpisode", "PyClassEnvironment", "json_type", "method_schema", "parse_docstring",
           "public_methods", "public_state", "to_json"]

_CONTAINERS = (list, dict)


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


def _is_model(value: Any) -> bool:
    return hasattr(value, "model_dump") and hasattr(type(value), "model_fields")


def to_json(value: Any, depth: int = 0) -> Any:
    """Plain JSON data for a state value (sets sorted, pydantic models by their dump,
    other objects by their public attributes)."""
    if value is None or isinstance(value, bool | int | str):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, float):
        return value if value == value else "NaN"
    if depth > 32:
        return repr(value)
    if isinstance(value, dict):  # dict.items: a copy-on-write dict is read, not copied
        return {str(k): to_json(v, depth + 1) for k, v in dict.items(value)}
    if isinstance(value, list | tuple):
        return [to_json(v, depth + 1) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((to_json(v, depth + 1) for v in value), key=repr)
    if isinstance(value, enum.Enum):
        return to_json(value.value, depth + 1)
    if _is_model(value):
        return value.model_dump(mode="json")
    if hasattr(value, "__dict__"):
        return {"__class__": type(value).__name__, **public_state(value, depth + 1)}
    return str(value)


def public_state(obj: Any, depth: int = 0) -> dict:
    """An object's public attributes as JSON data (its comparable state)."""
    return {k: to_json(v, depth + 1) for k, v in sorted(vars(obj).items()) if not k.startswith("_")}


def result_json(value: Any, depth: int = 0) -> Any:
    """A tool's return value as JSON data: pydantic models by `model_dump`, dataclasses by
    their fields, enums by their value; strings and numbers as they are."""
    if value is None or isinstance(value, bool | int | float | str) and not isinstance(value, enum.Enum):
        return value
    if depth > 32:
        return repr(value)
    if isinstance(value, enum.Enum):
        return result_json(value.value, depth + 1)
    if _is_model(value):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: result_json(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k if isinstance(k, str | int | float | bool) else str(k): result_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [result_json(v, depth + 1) for v in value]
    return value  # anything else: format_result shows it with str()


@functools.lru_cache(maxsize=4096)
def _method_schema(name: str, function: Any) -> dict:
    # a schema is built once per method (~1 ms for a pydantic-typed one), not once per episode
    return method_schema(name, function)


class ClassEpisode(Episode):
    """An episode over one or more live objects; their tool methods are the tools.

    `methods` maps tool name -> bound method (default: every object's public documented
    methods). When an object holds copy-on-write data (`copy_on_write.private_copy`), the
    state hash is a Merkle digest that only re-hashes what the episode read.
    """

    def __init__(self, instances: dict[str, Any], schemas: list[dict] | None = None,
                 methods: dict[str, Any] | None = None):
        self.instances = instances
        if methods is None:
            methods = {}
            for obj in instances.values():
                for name, bound in public_methods(obj).items():
                    methods.setdefault(name, bound)
        self._methods = methods
        if schemas is None:
            schemas = [_method_schema(n, getattr(m, "__func__", m)) for n, m in sorted(self._methods.items())]
        # only tools that exist as methods are callable, whatever the schemas say
        self._schemas = [s for s in schemas if s["function"]["name"] in self._methods]
        self._tracked = any(holds_copy_on_write(v) for obj in instances.values() for v in vars(obj).values())

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
        return result_json(self._methods[name](**arguments))

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

    def owner_digest(self, owner: str) -> str | None:
        """A digest of one object's public state when it holds copy-on-write data (None
        otherwise: then its whole state is cheap enough to fingerprint as it is)."""
        obj = self.instances.get(owner)
        if obj is None or not self._tracked:
            return None
        return state_digest(obj)

    def snapshot_hash(self) -> str:
        if not self._tracked:
            return state_hash(self.snapshot())
        return state_hash({cls: state_digest(obj) for cls, obj in sorted(self.instances.items())})


# ---------------------------------------------------------------------------------------
# building a toolkit from a task


def resolve(path: str, field: str) -> Any:
    """Import 'package.module:attribute[.attribute...]' (or 'package.module.attribute')."""
    module_name, sep, attrs = path.partition(":")
    if not sep:
        module_name, _, attrs = path.rpartition(".")
    try:
        out: Any = importlib.import_module(module_name)
        for attr in attrs.split("."):
            if attr.startswith("__"):
                raise AttributeError(f"{attr!r} is private")
            out = getattr(out, attr)
        return out
    except (ImportError, AttributeError, ValueError) as exc:
        raise InputError(f"cannot import {path!r} ({exc})", field=field) from None


def import_class(path: str) -> type:
    """Import 'package.module:Class' (or 'package.module.Class')."""
    cls = resolve(path, "env_config.classes")
    if not isinstance(cls, type):
        raise InputError(f"{path!r} is not a class", field="env_config.classes")
    return cls


# spec (as sorted JSON) -> the value it built: built once per process, never written to
_TEMPLATES: dict[bytes, Any] = {}


def _build(spec: Any, field: str) -> Any:
    """A config value with `{"$import": path}` and `{"$call": path, "args", "kwargs"}` built."""
    if isinstance(spec, list):
        return [_build(v, field) for v in spec]
    if not isinstance(spec, dict):
        return spec
    if "$import" in spec:
        return resolve(spec["$import"], field)
    if "$call" not in spec:
        return {k: _build(v, field) for k, v in spec.items()}
    key = orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)
    if key not in _TEMPLATES:
        function = resolve(spec["$call"], field)
        args, kwargs = _build(spec.get("args") or [], field), _build(spec.get("kwargs") or {}, field)
        try:
            _TEMPLATES[key] = function(*args, **kwargs)
        except Exception as exc:
            raise InputError(f"{spec['$call']} failed: {type(exc).__name__}: {exc}", field=field) from None
    return private_copy(_TEMPLATES[key])


def _structured(hint: Any) -> type | None:
    """The pydantic model or dataclass a hint names (also inside Optional/Annotated), or None."""
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and (hasattr(candidate, "model_validate") or dataclasses.is_dataclass(candidate)):
            return candidate
    return None


def coerce(value: Any, hint: Any, field: str) -> Any:
    """A JSON object given for a pydantic-model or dataclass hint, as that type."""
    target = _structured(hint)
    if target is None or not isinstance(value, dict):
        return value
    try:
        return target.model_validate(value) if hasattr(target, "model_validate") else target(**value)
    except Exception as exc:
        raise InputError(f"not a valid {target.__name__}: {exc}".splitlines()[0], field=field) from None


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj)
    except Exception:
        return getattr(obj, "__annotations__", {}) or {}


def construct(cls: type, kwargs: dict, where: str | None) -> Any:
    """`cls(**kwargs)` with JSON objects turned into the models its `__init__` hints name;
    a class that cannot be built is the task's error, not a crash."""
    hints = _hints(cls.__init__)
    kwargs = {k: coerce(v, hints.get(k), f"env_config.init.{cls.__name__}.{k}") for k, v in kwargs.items()}
    try:
        return cls(**kwargs)
    except Exception as exc:
        raise InputError(f"cannot build {cls.__name__}({', '.join(kwargs)}): {type(exc).__name__}: {exc}",
                         where=where, field=f"env_config.init.{cls.__name__}") from None


def _constructor_parameters(cls: type) -> set[str]:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return set()
    return {n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def load_state(obj: Any, config: dict, loader: str | None) -> None:
    """Put an object in its initial state: its loader method (a name) or loader function
    (`pkg.mod:function`, called as function(obj, config)) if given, else set attributes
    (a JSON object for an attribute annotated with a pydantic model or dataclass becomes one)."""
    config = copy.deepcopy(config)  # the object's state is its own: never the task record's dicts
    if loader and ":" in loader:
        function = resolve(loader, "env_config.loader")
        _run_loader(obj, lambda: function(obj, config))
        return
    if loader:
        if loader.startswith("_") or not callable(getattr(obj, loader, None)):
            raise InputError(f"{type(obj).__name__} has no loader method {loader!r}", field="env_config.loader")
        _run_loader(obj, lambda: getattr(obj, loader)(config))
        return
    hints = _hints(type(obj))
    for key, value in config.items():
        if key.startswith("_"):
            raise InputError(f"initial state may not set private attribute {key!r}", field="initial_state")
        setattr(obj, key, coerce(value, hints.get(key), f"initial_state.{type(obj).__name__}.{key}"))


def _run_loader(obj: Any, call: Any) -> None:
    try:
        call()
    except Exception as exc:
        raise InputError(f"loading {type(obj).__name__}'s initial state failed: {type(exc).__name__}: {exc}",
                         field="env_config.loader") from None


# ---------------------------------------------------------------------------------------
# which methods are tools


def _selector_predicate(selector: Any) -> Any:
    """name, function -> bool for env_config.tools: None (public documented methods), a
    list of names, {"marker": attribute} or {"predicate": "pkg.mod:function"}."""
    if selector is None:
        return None
    if isinstance(selector, list) and all(isinstance(n, str) for n in selector):
        names = set(selector)
        return lambda name, fn: name in names
    if isinstance(selector, dict) and set(selector) == {"marker"} and isinstance(selector["marker"], str):
        marker = selector["marker"]
        return lambda name, fn: bool(getattr(fn, marker, False))
    if isinstance(selector, dict) and set(selector) == {"predicate"} and isinstance(selector["predicate"], str):
        predicate = resolve(selector["predicate"], "env_config.tools.predicate")
        return lambda name, fn: bool(predicate(name, fn))
    raise InputError('expected null, a list of method names, {"marker": "attribute"} or {"predicate": "pkg.mod:function"}',
                     field="env_config.tools")


def select_tools(obj: Any, selector: Any, loader: str | None) -> dict[str, Any]:
    """The object's tool methods: public methods the selector picks (by default the
    documented ones), never the loader, never a private or dunder name."""
    keep = _selector_predicate(selector)
    out = {}
    for name, fn in inspect.getmembers(type(obj), predicate=inspect.isfunction):
        if name.startswith("_") or name == loader:
            continue
        if keep(name, fn) if keep is not None else bool((fn.__doc__ or "").strip()):
            out[name] = getattr(obj, name)
    return out


class PyClassEnvironment(Environment):
    """Any importable class. Task fields used:

    env_config = {
      "classes": ["pkg.mod:Class", ...],
      "init": {"Class": {"arg": value | {"$call": "pkg.mod:function", "args": [...], "kwargs": {...}}
                                      | {"$import": "pkg.mod:NAME"}}},   # constructor arguments
      "loader": null | "method_name" | "pkg.mod:function",                 # gets initial_state[Class]
      "tools": null | ["name", ...] | {"marker": "__tool__"} | {"predicate": "pkg.mod:function"},
    }
    initial_state = {"Class": {...}}: the loader's config; without a loader, entries that name
    constructor parameters go to the constructor and the others are set as attributes.
    """

    family = "pyclass"

    def reset(self, task: dict) -> Episode:
        cfg = task.get("env_config") or {}
        where = task.get("id")
        classes = cfg.get("classes") or []
        if not classes:
            raise InputError("pyclass task needs env_config.classes", where=where, field="env_config.classes")
        loader = cfg.get("loader")
        init = cfg.get("init") or {}
        instances: dict[str, Any] = {}
        methods: dict[str, Any] = {}
        for path in classes:
            cls = import_class(path)
            state = dict((task.get("initial_state") or {}).get(cls.__name__, {}))
            kwargs = _build(init.get(cls.__name__) or {}, f"env_config.init.{cls.__name__}")
            if not loader:  # initial-state entries that are constructor parameters go there
                for name in _constructor_parameters(cls) & set(state):
                    kwargs[name] = copy.deepcopy(state.pop(name))
            obj = construct(cls, kwargs, where)
            load_state(obj, state, loader)
            instances[cls.__name__] = obj
            for name, bound in select_tools(obj, cfg.get("tools"), loader).items():
                methods.setdefault(name, bound)
        if isinstance(cfg.get("tools"), list):
            missing = sorted(set(cfg["tools"]) - set(methods))
            if missing:
                raise InputError(f"no class of the task has a public method {missing[0]!r}", where=where,
                                 field="env_config.tools")
        return ClassEpisode(instances, methods=methods)
