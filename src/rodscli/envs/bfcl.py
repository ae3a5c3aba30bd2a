"""BFCL multi-turn: the paper's setting (docs/architecture.md section 2, family 1).

The 800 tasks of the four multi-turn categories (base, miss_func, miss_param, long_context;
200 each) and their stateful simulators ship in the `bfcl-eval` package. This module turns
BFCL's test entries and ground truth into rods task records and runs them on BFCL's own
simulator classes through the shared `ClassEpisode` core.

Only the data files and the simulator modules are touched: the rest of `bfcl_eval` pulls
heavy dependencies that the simulators do not need. Ground-truth call strings are parsed
as data (`ast.parse` + `ast.literal_eval` on the argument nodes; `bfcl_ground_truth`), never
evaluated.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import pickle
import random
from array import array
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from rodscli.config import option
from rodscli.envs.base import Environment, Episode, numbers_by_value
from rodscli.envs.bfcl_ground_truth import parse_call
from rodscli.envs.isolation import Private
from rodscli.envs.pyclass import ClassEpisode
from rodscli.errors import InputError, OptionError
from rodscli.profile import compute_profile
from rodscli.schemas import SKILLS, skill_order

# BFCL's multi-turn categories are rods's skill types (schemas/task.json): one list
CATEGORIES = SKILLS

# bfcl_eval.constants.executable_backend_config: class -> simulator module, class -> func doc file
_BACKEND = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"
CLASS_MODULES = {
    "GorillaFileSystem": "gorilla_file_system",
    "MathAPI": "math_api",
    "MessageAPI": "message_api",
    "TwitterAPI": "posting_api",
    "TicketAPI": "ticket_api",
    "TradingBot": "trading_bot",
    "TravelAPI": "travel_booking",
    "VehicleControlAPI": "vehicle_control",
}
CLASS_DOCS = {
    "GorillaFileSystem": "gorilla_file_system.json",
    "MathAPI": "math_api.json",
    "MessageAPI": "message_api.json",
    "TwitterAPI": "posting_api.json",
    "TicketAPI": "ticket_api.json",
    "TradingBot": "trading_bot.json",
    "TravelAPI": "travel_booking.json",
    "VehicleControlAPI": "vehicle_control.json",
}
# BFCL loads no scenario into stateless classes (constants.executable_backend_config.STATELESS_CLASSES)
STATELESS_CLASSES = {"MathAPI"}
# The user message BFCL sends on a turn where withheld functions become available
# (constants.default_prompts.DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC)
ADDED_FUNCTIONS_PROMPT = "I have updated some more functions you can choose from. What about now?"

# BFCL's parameter types -> JSON Schema types ('any' and unknown names: no constraint)
_BFCL_TYPES = {
    "dict": "object", "float": "number", "tuple": "array", "list": "array",
    "int": "integer", "bool": "boolean", "str": "string",
    "string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
    "array": "array", "object": "object", "null": "null",
}


def data_dir() -> Path:
    """The installed `bfcl_eval/data` folder (without importing the package's heavy parts)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("bfcl-eval is not installed: run `make install` "
                         "(or `pip install --no-deps bfcl-eval mpmath`)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


# ---------------------------------------------------------------- tool schemas


def _json_schema(node: Any) -> Any:
    """A BFCL parameter description converted to JSON Schema (recursively)."""
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, str):
            mapped = _BFCL_TYPES.get(value)
            if mapped is not None:
                out["type"] = mapped
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: _json_schema(v) for name, v in value.items()}
        elif key == "items":
            out[key] = _json_schema(value)
        else:
            out[key] = value
    return out


# Parameters whose documented type is narrower than what BFCL's own data uses: some initial
# states hold string ticket ids ('ticket_001' in multi_turn_*_173) and the ground truth passes
# them, so a typed check must accept both.
_TYPE_WIDENED = {("TicketAPI", "ticket_id"): ["integer", "string"]}


def function_schema(doc: dict, class_name: str = "") -> dict:
    """One BFCL function doc as an OpenAI function schema (the 'response' part is dropped)."""
    params = _json_schema(doc.get("parameters") or {})
    params["type"] = "object"
    params.setdefault("properties", {})
    params.setdefault("required", [])
    for pname, prop in params["properties"].items():
        widened = _TYPE_WIDENED.get((class_name, pname))
        if widened is not None:
            prop["type"] = widened
    return {"type": "function",
            "function": {"name": doc["name"], "description": doc.get("description", ""), "parameters": params}}


@cache
def class_tools(class_name: str) -> tuple[dict, ...]:
    """The tool schemas of one simulator class, from BFCL's function docs."""
    if class_name not in CLASS_DOCS:
        raise InputError(f"unknown BFCL class {class_name!r}", field="env_config.involved_classes")
    docs = _jsonl(data_dir() / "multi_turn_func_doc" / CLASS_DOCS[class_name])
    return tuple(function_schema(d, class_name) for d in docs)


def tools_for(classes: list[str]) -> list[dict]:
    """Tool schemas for a task's involved classes; on a name clash the later class wins, as in BFCL."""
    by_name: dict[str, dict] = {}
    for cls in classes:
        for schema in class_tools(cls):
            by_name[schema["function"]["name"]] = schema
    return list(by_name.values())


# ---------------------------------------------------------------- tasks


@cache
def _class_param_order(class_name: str) -> dict[str, list[str]]:
    # from the simulator's signatures: the function docs list some parameters in another
    # order (TravelAPI.purchase_insurance), and positional arguments follow the signature
    cls = simulator_class(class_name)
    out = {}
    for schema in class_tools(class_name):
        name = schema["function"]["name"]
        params = inspect.signature(getattr(cls, name)).parameters
        out[name] = [p for p in params if p != "self"]
    return out


def _param_order(classes: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for cls in classes:
        out.update(_class_param_order(cls))
    return out


def convert_entry(entry: dict, ground_truth: list[list[str]], category: str) -> dict:
    """One BFCL test entry and its ground truth as a rods task record."""
    classes = list(entry["involved_classes"])
    tools = tools_for(classes)
    order = _param_order(classes)
    missed = entry.get("missed_function") or {}
    user_turns = []
    for turn, messages in enumerate(entry["question"]):
        text = "\n".join(m["content"] for m in messages if m.get("role") == "user")
        if not messages and str(turn) in missed:
            text = ADDED_FUNCTIONS_PROMPT
        user_turns.append(text)
    reference = []
    for turn, calls in enumerate(ground_truth):
        try:
            reference.append([parse_call(c, order) for c in calls])
        except ValueError as exc:
            raise InputError(str(exc), where=entry["id"], field=f"ground_truth[{turn}]") from None
    withheld, released_early = _withheld(missed, reference)
    return {
        "id": f"bfcl-{entry['id']}",
        "env": "bfcl",
        "domain": "bfcl",
        "skill": category,
        "origin": "seed",
        "parent_id": None,
        "generation": 0,
        "created_iter": None,
        "system_prompt": None,
        "user_turns": user_turns,
        "initial_state": entry.get("initial_config") or {},
        # BFCL calls the simulator whatever the argument types (see BFCLEnvironment)
        "env_config": {"involved_classes": classes, "long_context": category == "long_context", "check_arguments": False},
        "tools": [t["function"]["name"] for t in tools],
        "withheld": withheld,
        "reference": reference,
        "profile": None,
        "synthesis": None,
        "meta": {
            "bfcl_id": entry["id"],
            "category": f"multi_turn_{category}",
            "excluded_function": entry.get("excluded_function") or [],
            "path": entry.get("path") or [],
            "missed_function": missed,
            "withheld_used_early": released_early,
        },
    }


def _withheld(missed: dict[str, list[str]], reference: list[list[dict]]) -> tuple[list[dict], list[str]]:
    """The tools an entry holds back until a turn, and those its reference calls before that turn.

    BFCL executes any method of an involved class, offered or not; one entry's ground truth
    (miss_func_49) calls a tool before the turn that releases it. Such a tool is not withheld
    (it is recorded in meta), so that every reference stays reachable.
    """
    first_use: dict[str, int] = {}
    for turn, calls in enumerate(reference):
        for c in calls:
            first_use.setdefault(c["name"], turn)
    withheld, released_early = [], []
    for turn, names in sorted(missed.items(), key=lambda kv: int(kv[0])):
        for name in names:
            if first_use.get(name, int(turn)) < int(turn):
                released_early.append(name)
            else:
                withheld.append({"tool": name, "turn": int(turn)})
    return withheld, released_early


def _id_number(task: dict) -> int:
    return int(task["meta"]["bfcl_id"].rsplit("_", 1)[1])


@cache
def _load_category(category: str) -> tuple[dict, ...]:
    root = data_dir()
    entries = _jsonl(root / f"BFCL_v4_multi_turn_{category}.json")
    answers = {a["id"]: a["ground_truth"] for a in _jsonl(root / "possible_answer" / f"BFCL_v4_multi_turn_{category}.json")}
    tasks = []
    for entry in entries:
        if entry["id"] not in answers:
            raise InputError("no ground truth for this entry", where=entry["id"])
        tasks.append(convert_entry(entry, answers[entry["id"]], category))
    tasks.sort(key=_id_number)
    return tuple(tasks)


def load_tasks(categories: list[str] | None = None) -> list[dict]:
    """The BFCL multi-turn tasks as rods task records (fresh dicts: callers may mutate them)."""
    chosen = list(categories or CATEGORIES)
    for c in chosen:
        if c not in CATEGORIES:
            raise OptionError(f"unknown BFCL category {c!r} (choose from {', '.join(CATEGORIES)})")
    return [orjson.loads(orjson.dumps(t)) for c in chosen for t in _load_category(c)]


def split_tasks(tasks: list[dict], split: str, seed: int = 0, per_category: int = 100) -> list[dict]:
    """The paper's split: per category, `per_category` tasks for training, the rest for test.

    Within each category the tasks are ordered by their BFCL number and shuffled by
    `random.Random(f"{seed}:{category}")`; the first `per_category` are 'train'.
    """
    if split not in ("train", "test", "all"):
        raise OptionError(f"--split must be train, test or all, got {split!r}")
    if split == "all":
        return list(tasks)
    by_skill: dict[str, list[dict]] = {}
    for t in tasks:
        by_skill.setdefault(t["skill"], []).append(t)
    out = []
    for skill in sorted(by_skill, key=skill_order):
        group = sorted(by_skill[skill], key=_id_number)
        ids = [t["id"] for t in group]
        random.Random(f"{seed}:{skill}").shuffle(ids)
        train = set(ids[:per_category])
        out.extend(t for t in group if (t["id"] in train) == (split == "train"))
    return out


@dataclass
class BFCLTasksOptions:
    """Options of `rods tasks bfcl`."""

    split: str = option("train", help="train: 100 tasks per category (the paper's training set); "
                        "test: the other 100 per category (evaluation); all: all 800.")
    categories: list[str] = option(list(CATEGORIES), help="BFCL multi-turn categories to include "
                                   f"({', '.join(CATEGORIES)}). Repeat the option or separate by commas.")
    split_seed: int = option(0, help="Seed of the train/test split: per category, BFCL's tasks in id "
                             "order are shuffled by random.Random(f'{seed}:{category}') and the first "
                             "--per-category are train. The default 0 is the documented split.")
    per_category: int = option(100, help="Training tasks per category (the rest are test).")
    profile: bool = option(True, help="Compute each task's complexity profile Phi (replays the reference).")

    def __post_init__(self) -> None:
        # `--categories base,long_context` and `--categories base --categories long_context` alike
        self.categories = [c.strip() for item in self.categories for c in item.split(",") if c.strip()]


def bfcl_tasks(opts: BFCLTasksOptions) -> list[dict]:
    """The BFCL tasks of one split, with their complexity profiles."""
    if opts.per_category < 0:
        raise OptionError(f"--per-category must be >= 0, got {opts.per_category}")
    tasks = split_tasks(load_tasks(opts.categories), opts.split, opts.split_seed, opts.per_category)
    if opts.profile:
        for task in tasks:
            task["profile"] = compute_profile(task)
    return tasks


# ---------------------------------------------------------------- episodes


@cache
def simulator_class(class_name: str) -> type:
    if class_name not in CLASS_MODULES:
        raise InputError(f"unknown BFCL class {class_name!r}", field="env_config.involved_classes")
    return getattr(importlib.import_module(f"{_BACKEND}.{CLASS_MODULES[class_name]}"), class_name)


_PLAIN = frozenset((str, int, bool, type(None)))  # values `_state` keeps as they are


def _state(value: Any) -> Any:
    """Public state as JSON data, compared the way BFCL's checker compares it.

    BFCL compares public attributes with `==`; its file-system objects define `__eq__` on
    name and content only, so a directory's `parent` link (a cycle) is left out here too.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:  # the common case first: plain values are kept as they are
        return {k if type(k) is str else _key(k): v if type(v) in _PLAIN else _state(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _PLAIN else _state(v) for v in value]
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value else "NaN"
    if isinstance(value, dict):
        return {_key(k): _state(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_state(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_state(v) for v in value), key=repr)
    attrs = getattr(value, "__dict__", None)
    if attrs is None:
        return str(value)
    return {"__class__": type(value).__name__,
            **{k: _state(v) for k, v in sorted(attrs.items()) if not k.startswith("_") and k != "parent"}}


def _key(key: Any) -> str:
    """A dict key as text; keys equal under `==` (1, 1.0, True) give the same text."""
    if type(key) is str:
        return key
    return str(numbers_by_value(key) if type(key) is float or type(key) is bool else key)


class BFCLEpisode(ClassEpisode):
    """BFCL simulator instances; the snapshot is each class's public attributes.

    `initial_states` holds, until the first call, each class's attributes pickled the way
    they were unpickled (pickle.HIGHEST_PROTOCOL; only where pickling them again gives the
    same bytes), so that a caller tracking state by its bytes need not pickle them again.
    """

    initial_states: dict[str, bytes] | None = None
    refuses_withheld = False  # BFCL executes a call to a withheld function (it is only undocumented)
    _private: Private | None = None  # this episode's copies of state kept outside the instances

    def invoke(self, name: str, arguments: dict) -> Any:
        self.initial_states = None
        if self._private is None:
            self._private = Private()
        with self._private.calling(type(self._methods[name].__self__), name):
            return super().invoke(name, arguments)

    def result_text(self, value: Any) -> str:
        """A return value as BFCL's checker writes it (so that results compare as there):
        text as it is, a dict as `json.dumps` (insertion order; `str` when not JSON), anything
        else as `str`."""
        if type(value) is str:
            return value
        if type(value) is dict:
            try:
                return json.dumps(value)
            except (TypeError, ValueError):
                return str(value)
        return str(value)

    def snapshot(self) -> dict:
        return {cls: _state({k: v for k, v in vars(obj).items() if not k.startswith("_")})
                for cls, obj in sorted(self.instances.items())}

    # synthesis hooks (see Episode; the rest is ClassEpisode's)
    def save_state(self, owner: str) -> bytes | None:
        if self.initial_states and owner in self.initial_states:  # no call yet: the bytes it was loaded from
            return b"p" + self.initial_states[owner]
        return super().save_state(owner)

    def state_view(self, owner: str) -> Any:
        """The class's public state compared the way BFCL's checker compares it (see `_state`)."""
        return _state({k: v for k, v in vars(self.instances[owner]).items() if not k.startswith("_")})


class BFCLEnvironment(Environment):
    """Runs BFCL tasks. Task fields used: env_config.involved_classes, env_config.long_context,
    env_config.check_arguments, initial_state (BFCL's initial_config keyed by class name).

    Arguments are not checked against the tool schemas (env_config.check_arguments false,
    the default here): as in BFCL's checker, the method is called with them and its own
    exception (a TypeError for a missing or unknown argument, whatever the simulator
    raises on a wrong type) is the tool error; `logarithm(value='20')` runs, as in BFCL.
    A withheld tool is not offered (its schema is not shown) until its turn, but a call to
    it runs, as BFCL's checker runs any method of the task's classes.
    """

    family = "bfcl"

    def reset(self, task: dict) -> Episode:
        cfg = task.get("env_config") or {}
        classes = cfg.get("involved_classes") or []
        if not classes:
            raise InputError("BFCL task needs env_config.involved_classes", where=task.get("id"),
                             field="env_config.involved_classes")
        long_context = bool(cfg.get("long_context", False))
        checks_arguments = bool(cfg.get("check_arguments", False))
        initial = task.get("initial_state") or {}
        instances, loaded = {}, {}
        for name in classes:
            cls = simulator_class(name)
            if name in STATELESS_CLASSES:
                instances[name] = Private().run(cls, "__init__", cls)
                continue
            obj = cls.__new__(cls)
            blob, stable = _loaded_state(name, orjson.dumps(initial.get(name, {})), long_context)
            vars(obj).update(pickle.loads(blob))
            instances[name] = obj
            if stable:
                loaded[name] = blob
        key = tuple(classes)
        known = _EPISODE_TOOLS.get(key)
        episode = BFCLEpisode(instances, known.tools if known is not None else tools_for(classes))
        episode.initial_states = loaded
        episode.checks_arguments = checks_arguments
        if known is None:  # the tools, tool index and compiled checks of this class combination, once
            known = _EPISODE_TOOLS[key] = _ClassTools(tuple(episode.tools()), episode.tool_index(), episode.argument_checks())
        episode._tool_index, episode._argument_checks = known.index, known.checks  # read only, shared
        return episode


class _ClassTools(NamedTuple):
    """What every episode of one class combination shares (read only)."""

    tools: tuple[dict, ...]
    index: dict
    checks: dict


_EPISODE_TOOLS: dict[tuple[str, ...], _ClassTools] = {}


class TrackedRandom(random.Random):
    """`random.Random` (the same draws) that pickles cheaply while it is not drawn from.

    The simulators keep a seeded generator (`_random`); their state is pickled before and
    after every call (undo, change detection, Phi's state fingerprints) and unpickled at
    every reset. A plain generator pickles as 625 integers read out each time; this one
    keeps its state as bytes until the next draw, and an unpickled one sets its state
    from them only when first drawn from (most episodes never draw).
    """

    _packed: bytes | None = None  # the state as bytes (see __reduce__), while not drawn from
    _pending: bool = False  # the generator's own state is not set from _packed yet

    @classmethod
    def copy_of(cls, rng: random.Random) -> TrackedRandom:
        out = cls()
        out.setstate(rng.getstate())
        return out

    def _moved(self) -> None:
        if self._pending:
            _CRandom.setstate(self, tuple(array("I", self._packed.partition(b"\n")[2])))  # type: ignore[union-attr]
            self._pending = False
        self._packed = None

    def random(self) -> float:
        self._moved()
        return super().random()

    def getrandbits(self, k: int) -> int:
        self._moved()
        return super().getrandbits(k)

    def getstate(self) -> tuple:
        if self._pending:
            packed = self._packed
            self._moved()
            self._packed = packed
        return super().getstate()

    def seed(self, *args: Any, **kwargs: Any) -> None:
        self._pending, self._packed = False, None
        super().seed(*args, **kwargs)

    def setstate(self, state: tuple) -> None:
        self._pending, self._packed = False, None
        super().setstate(state)

    def __reduce__(self) -> tuple:
        if self._packed is None:
            version, internal, gauss = self.getstate()
            self._packed = orjson.dumps([version, gauss]) + b"\n" + array("I", internal).tobytes()
        return _unpack_random, (self._packed,)


_CRandom = random.Random.__mro__[1]  # the C generator under random.Random


def _unpack_random(packed: bytes) -> TrackedRandom:
    version, gauss = orjson.loads(packed.partition(b"\n")[0])
    if version != random.Random.VERSION:
        raise ValueError(f"random state of version {version}, expected {random.Random.VERSION}")
    out = TrackedRandom.__new__(TrackedRandom)  # its state is set from `packed` on the first draw
    out.gauss_next = gauss
    out._packed, out._pending = packed, True
    return out


_LOADED: dict[tuple[str, bytes, bool], tuple[bytes, bool]] = {}
_LOADED_MAX = 4096  # initial states kept (a few kB to a few hundred kB each)


def _loaded_state(name: str, config: bytes, long_context: bool) -> tuple[bytes, bool]:
    """A simulator's attributes after loading `config` (its JSON text), pickled, and
    whether unpickling and pickling them again gives the same bytes.

    Loading runs BFCL's `_load_scenario` (deep copies of default states, random generators
    seeded, long-context extras attached from module-level data by reference) once per
    distinct initial state, on private copies of the state outside the instance (see
    envs.isolation); every episode unpickles its own private copy of the whole object
    graph, so no episode's writes reach another or the module-level data.
    """
    key = (name, config, long_context)
    known = _LOADED.get(key)
    if known is None:
        cls, private = simulator_class(name), Private()
        obj = private.run(cls, "__init__", cls)
        private.run(cls, "_load_scenario", lambda: obj._load_scenario(orjson.loads(config), long_context=long_context))
        for attr, value in vars(obj).items():
            if type(value) is random.Random:
                vars(obj)[attr] = TrackedRandom.copy_of(value)
        blob = pickle.dumps(vars(obj), protocol=pickle.HIGHEST_PROTOCOL)
        stable = pickle.dumps(pickle.loads(blob), protocol=pickle.HIGHEST_PROTOCOL) == blob
        if len(_LOADED) >= _LOADED_MAX:
            _LOADED.clear()
        known = _LOADED[key] = (blob, stable)
    return known
