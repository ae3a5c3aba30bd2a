"""The environment protocol (docs/architecture.md section 2) and what every family shares.

An `Environment` turns a task into a live, isolated `Episode`; an episode lists its tools
(OpenAI function schemas), executes calls by name with keyword arguments, and exposes a
comparable snapshot of its public state. Every model mistake (unknown tool, withheld tool,
bad arguments, tool exception) comes back as a `CallOutcome` with an error kind, never as
an exception: bad model output is data, scored later.

Families implement `Episode.invoke` (and `tools`, `snapshot`); the checks around it live
here once, so that rollout, score, synthesis and replay all see the same behaviour.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from rodscli.errors import InputError

# Error kinds recorded in rollout.calls[].error
PARSE_ERROR = "parse_error"
UNKNOWN_TOOL = "unknown_tool"
WITHHELD = "withheld"
BAD_ARGUMENTS = "bad_arguments"
TOOL_ERROR = "tool_error"
ENV_ERROR = "env_error"  # the environment itself failed (server crash or hang): the episode ends

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "null": (type(None),),
}


@dataclass(slots=True)
class CallOutcome:
    """What a tool call gave back: the result text shown to the model, and an error kind."""

    result: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def format_result(value: Any) -> str:
    """The text a tool result is shown as: strings as they are, anything else as sorted JSON.

    Any value gives text: integers past 64 bits and objects orjson cannot write fall back to
    the standard library's JSON, lone surrogates become "?", and a text longer than
    MAX_RESULT_CHARS is cut (saying so), since no model context holds more."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str).decode()
        except TypeError:  # orjson.JSONEncodeError: big integers, deep nesting, surrogates
            try:
                text = json.dumps(value, sort_keys=True, default=str)
            except (TypeError, ValueError, RecursionError) as exc:
                text = f"<a {type(value).__name__} that cannot be written as JSON: {type(exc).__name__}>"
    return clean_text(text)


MAX_RESULT_CHARS = 1_000_000


def clean_text(text: str) -> str:
    """`text` as valid UTF-8 (lone surrogates replaced by "?"), at most MAX_RESULT_CHARS long."""
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"[... {len(text) - MAX_RESULT_CHARS} characters cut]"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode()
    return text


def state_hash(snapshot: Any) -> str:
    """A stable hash of a public-state snapshot: states equal under Python's `==` give equal
    hashes, so numbers count by value as in BFCL's checker (the state after
    `purchase_insurance(1500)` and after `purchase_insurance(1500.0)` hash the same)."""
    blob = orjson.dumps(numbers_by_value(snapshot), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def numbers_by_value(value: Any) -> Any:
    """JSON data with every number that equals an integer written as that integer, keys
    included: floats like 6500.0, and booleans (Python's `==` counts them as 0 and 1). Data
    without such numbers comes back as the same objects."""
    kind = type(value)
    if kind is dict:
        out = None
        for k, v in value.items():
            kind = type(v)
            v2 = v if kind is str or kind is int or v is None else numbers_by_value(v)
            k2 = numbers_by_value(k) if type(k) is float or type(k) is bool else k  # (a tuple key stays a tuple)
            if out is None:
                if v2 is v and k2 is k:
                    continue
                out = {}
                for k0, v0 in value.items():  # the items before this one were unchanged
                    if k0 is k:
                        break
                    out[k0] = v0
            out[k2] = v2
        return value if out is None else out
    if kind is list or kind is tuple:
        items = None
        for i, v in enumerate(value):
            kind = type(v)
            v2 = v if kind is str or kind is int or v is None else numbers_by_value(v)
            if items is None:
                if v2 is v:
                    continue
                items = list(value[:i])
            items.append(v2)
        return value if items is None else items
    if kind is float:  # (beyond 64 bits an integer is not JSON for orjson: kept as a float)
        return int(value) if value.is_integer() and -_INT64 <= value < _INT64 else value
    if kind is bool:
        return int(value)
    return value


_INT64 = 2.0**63


def type_matches(value: Any, json_type: str | list[str] | None) -> bool:
    """Whether a JSON value is compatible with a JSON-Schema type (ints count as numbers)."""
    if json_type is None or json_type == "any":
        return True
    types = [json_type] if isinstance(json_type, str) else json_type
    for t in types:
        allowed = _JSON_TYPES.get(t)
        if allowed is None:  # a type name we do not know: do not reject on it
            return True
        if isinstance(value, bool) and t in ("integer", "number"):
            continue
        if isinstance(value, allowed):
            return True
    return False


class ArgumentCheck:
    """A tool schema's argument rules, compiled once: the check runs on every call, so it is
    a few dict lookups and one isinstance per argument (the same rules as `type_matches`)."""

    __slots__ = ("schema", "required", "rules", "names")

    def __init__(self, schema: dict):
        self.schema = schema  # kept alive: the cache below is keyed by its id
        params = schema.get("function", schema).get("parameters") or {}
        props = params.get("properties") or {}
        self.required = tuple(params.get("required") or ())
        self.names = {name: (prop or {}).get("type") for name, prop in props.items()}
        # name -> (python types, bool allowed), or None for no constraint
        self.rules: dict[str, tuple[tuple[type, ...], bool] | None] = {}
        for name, json_type in self.names.items():
            types = [json_type] if isinstance(json_type, str) else json_type
            if json_type is None or json_type == "any" or any(t not in _JSON_TYPES for t in types):
                self.rules[name] = None
            else:
                allowed = tuple({py for t in types for py in _JSON_TYPES[t]})
                # a bool is an int in Python, but not a JSON integer or number
                self.rules[name] = (allowed, "boolean" in types or not {"integer", "number"} & set(types))

    def problem(self, arguments: Any) -> str | None:
        """What is wrong with `arguments`, or None."""
        if not isinstance(arguments, dict):
            return f"arguments must be a JSON object, got {type(arguments).__name__}"
        for name in self.required:
            if name not in arguments:
                return f"missing required argument '{name}'"
        rules = self.rules
        for name, value in arguments.items():
            if name not in rules:
                return f"unexpected argument '{name}'"
            rule = rules[name]
            if rule is None or (value is None and name not in self.required):
                continue
            if not isinstance(value, rule[0]) or (value.__class__ is bool and not rule[1]):
                return f"argument '{name}' should be {self.names[name]}, got {type(value).__name__}"
        return None


_CHECKS: dict[int, ArgumentCheck] = {}
_CHECKS_MAX = 4096


def argument_check(schema: dict) -> ArgumentCheck:
    """The compiled check of a tool schema, cached by identity (the entry keeps its schema
    alive, so an id cannot be reused while cached). Tool schemas are not changed in place."""
    check = _CHECKS.get(id(schema))
    if check is None:
        if len(_CHECKS) >= _CHECKS_MAX:  # per-episode schemas (MCP) must not pile up
            _CHECKS.clear()
        check = _CHECKS[id(schema)] = ArgumentCheck(schema)
    return check


def check_arguments(schema: dict, arguments: Any) -> str | None:
    """Check call arguments against a tool's OpenAI schema; return a problem or None."""
    return argument_check(schema).problem(arguments)


def tool_name(schema: dict) -> str:
    return schema.get("function", schema)["name"]


class Episode(ABC):
    """One live, isolated copy of a task's environment. Use as a context manager.

    `failed` becomes True when the environment itself broke (a crashed server, a hang):
    the rollout then ends the episode with finish_reason 'env_error'.
    """

    failed: bool = False
    # Whether `call` checks arguments against the tool schema before invoking (bad_arguments).
    # True for the families that define their schemas (built-in, pyclass, MCP); BFCL sets it
    # from its task's env_config.check_arguments (false: the call runs, as in BFCL's checker).
    checks_arguments: bool = True
    # Whether `call` refuses a tool not offered yet (withheld) with the error 'withheld'. BFCL
    # sets it False: its checker executes any method of the task's classes, offered or not.
    refuses_withheld: bool = True
    _argument_checks: dict[str, ArgumentCheck] | None = None  # built on the first call

    @abstractmethod
    def tools(self) -> list[dict]:
        """Every tool of this episode as OpenAI function schemas ({"type": "function", ...})."""

    @abstractmethod
    def invoke(self, name: str, arguments: dict) -> Any:
        """Run a tool whose name and arguments were already checked; may raise."""

    @abstractmethod
    def snapshot(self) -> Any:
        """The public state, as plain JSON data, comparable with `==` and `state_hash`."""

    def snapshot_hash(self) -> str:
        """A hash that is equal exactly when the snapshots are: `state_hash(self.snapshot())`, unless a
        family computes one without building the snapshot (pyclass's copy-on-write digest)."""
        return state_hash(self.snapshot())

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (processes, temp dirs)."""

    # What synthesis needs (rodscli.synth), beyond running calls. A family whose state is
    # split among owners (the objects of a Python-class episode) names the owner each tool
    # runs on (a call changes only its owner's state), saves and restores each owner's
    # state as bytes (so a call that changed the wrong thing is undone and a call met again
    # on a known state need not run), and shows each owner's public state as JSON data to
    # ground arguments in. The defaults fit an episode whose state is one whole (an MCP
    # server): no owners, and synthesis grounds in `snapshot()`.

    state_survives_close: bool = False  # the state can still be read after close() (objects in this process)
    live_views: bool = False  # state_view gives the live attributes themselves (JSON data already): read, never keep

    def state_owners(self) -> list[str]:
        """The owners of separately saved state, in the episode's order ([]: the state is one whole)."""
        return []

    def tool_owner(self, name: str) -> str:
        """The owner tool `name` runs on; "" for none (the whole episode)."""
        return ""

    def save_state(self, owner: str) -> bytes | None:
        """The owner's whole state (private attributes included) as bytes; None when it cannot be saved."""
        return None

    def restore_state(self, owner: str, blob: bytes) -> None:  # noqa: B027 - optional, paired with save_state
        """Put the owner back in a state `save_state` gave. The default saves nothing (None), so
        there is never anything to restore; a family that saves state restores it too (checked
        when the class is defined, see `__init_subclass__`)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if (cls.save_state is Episode.save_state) != (cls.restore_state is Episode.restore_state):
            raise TypeError(f"{cls.__name__} must define save_state and restore_state together")

    def state_view(self, owner: str) -> Any:
        """The owner's public state as JSON data (read only)."""
        raise KeyError(owner)

    def __enter__(self) -> Episode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tool_index(self) -> dict[str, dict]:
        """Tool name -> schema."""
        cached = getattr(self, "_tool_index", None)
        if cached is None:
            cached = {tool_name(t): t for t in self.tools()}
            self._tool_index = cached
        return cached

    def argument_checks(self) -> dict[str, ArgumentCheck]:
        """Tool name -> its compiled argument check."""
        cached = self._argument_checks
        if cached is None:
            cached = {name: argument_check(schema) for name, schema in self.tool_index().items()}
            self._argument_checks = cached
        return cached

    def call(self, name: Any, arguments: Any, offered: set[str] | None = None) -> CallOutcome:
        """Execute a model's call. Never raises for the model's mistakes.

        `offered` is the set of tool names the model may call now (withheld tools excluded);
        None means every tool of the episode. Only a name in the tool list reaches `invoke`.
        """
        checks = self._argument_checks or self.argument_checks()
        if not isinstance(name, str) or name not in checks:
            return CallOutcome(f"Error: unknown tool {name!r}", UNKNOWN_TOOL)
        if offered is not None and name not in offered and self.refuses_withheld:
            return CallOutcome(f"Error: tool {name!r} is not available", WITHHELD)
        if not isinstance(arguments, dict):
            return CallOutcome(f"Error: arguments must be a JSON object, got {type(arguments).__name__}", BAD_ARGUMENTS)
        problem = checks[name].problem(arguments) if self.checks_arguments else None
        if problem:
            return CallOutcome(f"Error: {problem}", BAD_ARGUMENTS)
        try:
            value = self.invoke(name, dict(arguments))
        except Exception as exc:  # a tool's failure is the model's data, not our crash
            return CallOutcome(error_text(exc), TOOL_ERROR)
        try:
            return CallOutcome(self.result_text(value))
        except Exception as exc:  # e.g. an object whose str() raises: still the model's data
            return CallOutcome(error_text(exc), TOOL_ERROR)

    def result_text(self, value: Any) -> str:
        """The text a tool's return value is shown as (`format_result`; a family may differ)."""
        return format_result(value)


def error_text(exc: BaseException) -> str:
    """'Error: Kind: message' for a tool's exception, whatever its message holds."""
    try:
        message = str(exc)
    except Exception:  # a message that cannot be shown (e.g. an integer past str()'s digit limit)
        message = "(message cannot be shown)"
    return clean_text(f"Error: {type(exc).__name__}: {message}")


class Environment(ABC):
    """Makes isolated episodes from tasks of one family."""

    family: str = ""

    @abstractmethod
    def reset(self, task: dict) -> Episode:
        """A fresh episode in the task's initial state."""

    def new_world(self, task: dict, rng: random.Random, others: Callable[[], list[dict]], attempt: int,
                  salt: int = 0) -> tuple[dict, str]:
        """A fresh initial state for a synthesized variant of `task`, and where it came from.

        By default the initial state of another known task like it (`others()`: same family,
        domain and env_config), every other attempt the task's own (some plans need exactly
        its entities). A family that can make worlds (builtin) makes one, deterministic in
        `rng` and `salt` (the run's seed).
        """
        worlds = others()
        if worlds and attempt % 2 == 0:
            return rng.choice(worlds), "pool"
        return task["initial_state"], "seed"


# family name -> "module:attribute"; imported on first use so optional extras stay optional
FAMILIES: dict[str, str] = {
    "builtin": "rodscli.envs.builtin:BuiltinEnvironment",
    "bfcl": "rodscli.envs.bfcl:BFCLEnvironment",
    "pyclass": "rodscli.envs.pyclass:PyClassEnvironment",
    "mcp": "rodscli.envs.mcp:MCPEnvironment",
}
_INSTANCES: dict[str, Environment] = {}


def environment_for(task: dict) -> Environment:
    """The environment that runs `task` (one shared, stateless factory per family)."""
    family = task.get("env")
    env = _INSTANCES.get(family)
    if env is None:
        if family not in FAMILIES:
            raise InputError(f"unknown environment family {family!r} (known: {', '.join(FAMILIES)})",
                             where=task.get("id"), field="env")
        module_name, _, attr = FAMILIES[family].partition(":")
        env = getattr(importlib.import_module(module_name), attr)()
        _INSTANCES[family] = env
    return env


def open_episode(task: dict) -> Episode:
    return environment_for(task).reset(task)


def offered_tools(task: dict, episode: Episode, turn: int) -> list[dict]:
    """Tool schemas offered at user turn `turn`: the task's tools minus those still withheld."""
    hidden = {w["tool"] for w in task.get("withheld", []) if w["turn"] > turn}
    wanted = set(task["tools"]) if task.get("tools") else None
    return [
        t for t in episode.tools()
        if tool_name(t) not in hidden and (wanted is None or tool_name(t) in wanted)
    ]


@dataclass
class ReferenceTrace:
    """The reference solution executed turn by turn on a fresh episode."""

    results: list[list[str]] = field(default_factory=list)  # per turn, per call
    errors: list[list[str | None]] = field(default_factory=list)
    state_hashes: list[str] = field(default_factory=list)  # after each turn
    snapshots: list[Any] = field(default_factory=list)  # after each turn
    failure: str | None = None  # the environment itself broke during the replay (ENV_ERROR): why

    @property
    def ok(self) -> bool:
        return all(e is None for turn in self.errors for e in turn)


def replay_reference(task: dict, keep_snapshots: bool = False) -> ReferenceTrace:
    """Execute the task's reference calls turn by turn on a fresh episode."""
    trace = ReferenceTrace()
    with open_episode(task) as episode:
        for turn, calls in enumerate(task["reference"]):
            offered = {tool_name(t) for t in offered_tools(task, episode, turn)}
            outcomes = [episode.call(c["name"], c["arguments"], offered) for c in calls]
            trace.results.append([o.result or "" for o in outcomes])
            trace.errors.append([o.error for o in outcomes])
            if keep_snapshots:
                snap = episode.snapshot()
                trace.state_hashes.append(state_hash(snap))
                trace.snapshots.append(snap)
            else:
                trace.state_hashes.append(episode.snapshot_hash())
        if episode.failed or any(e == ENV_ERROR for turn in trace.errors for e in turn):
            trace.failure = getattr(episode, "failure", None) or "the environment failed"
    return trace
