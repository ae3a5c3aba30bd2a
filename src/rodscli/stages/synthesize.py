"""Skill-aligned resampling of boundary tasks (`rods synthesize`, DESIGN.md section 6).

For each seed task, new tasks x' are made whose profile Phi(x') matches Phi(seed) while the
world, the entities and the wording are new. The seed's executed reference is read as a
*plan* over the API dependency graph: per call, each argument is bound to a source:

- `flow`: the value comes from the result of an earlier call (the JSON path inside it; a
  list argument may take each element from an earlier result, like numbers to average);
- `state`: the value names something in the live state (a path whose collection levels
  are wildcards, e.g. customers.*.name; arguments of one call that point into the same
  entity are bound jointly, a path step naming an earlier choice stays that choice, and
  a key must name the same kind of entity: a file's name and folder stay one file);
- `literal`: anything else (a new address, a quantity): drawn from the reference calls of
  known tasks (the mined API graph), the k-th call of a tool from the k-th call of that
  tool in one donor task, never invented. Enum arguments keep the seed's value: the
  plan's meaning hangs on them (list the *shipped* orders).

A leaf step (nothing flows in or out) may be done by another tool of its class with
arguments of one of its observed calls (`--swap`): Phi does not count tool names.

A candidate is made on a new world (builtin: the domain's world generator; other
families: the state of another known task with the same classes, every other attempt the
seed's own): every argument is grounded in the live state at the moment of its call and
the call is executed. Repair is bounded: a call that fails, or that changes state where
the seed's did not (or the other way round: Phi's state edges hang on it; the change is
undone), is re-grounded up to `--repairs` times; an execution that still fails starts
over in the same world a few times, the last time with the seed's literal values. The
executed calls, turn by turn, are the reference; the user turns are written afterwards
(template writer, or `llm`: a policy rewrites each template turn and a critic keeps the
rewrite only when it names the same values), with the seed's skill augmentation
(miss_func: the same tool withheld until the same turn; miss_param: one required value
left out of the request and supplied by the next user turn; long_context: a large world).

Filters, each a rejection reason counted per attempt: the execution failed
(`execution_failed`), a replay on a fresh episode gives other results or another final
state (`replay_failed`), profile distance to the seed above tolerance
(`profile_mismatch`), Jaccard similarity of call sequences (name and arguments) >= 0.7
against a known task or an accepted candidate (`near_duplicate`), no call at all
(`trivial`); the cheap ones run first, the replay last. Deterministic in the seed.

Speed (the same candidates as running everything): each class's state is tracked as its
pickled bytes (`ClassStates`: one dump per call tells whether it changed state and undoes
it), a call met again on the same class state (a repair, a restart, another attempt in
the same world) restores the state it left instead of running (`execute`'s `outcomes`),
and class states are converted to JSON for grounding once per distinct state.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import pickle
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import orjson

from rodscli.config import option
from rodscli.envs.base import Episode, offered_tools, open_episode, state_hash, tool_name
from rodscli.errors import InputError, OptionError
from rodscli.profile import (
    CallTrace,
    compute_profile,
    nontrivial,
    profile_distance,
    trace_calls,
    value_key,
)

REASONS = ("execution_failed", "replay_failed", "profile_mismatch", "near_duplicate", "trivial")
WRITERS = ("template", "llm")
RESTARTS = 4  # executions of one attempt in the same world before it is given up
MAX_PATHS = 12  # state paths remembered per argument value (the first ones in state order)
OUTCOMES = 50_000  # call outcomes remembered in one run (see execute) before they are forgotten
VIEWS = 4096  # class states kept converted to JSON data (and their entity lists) in one run (see ClassStates.view)

# ------------------------------------------------------------------------------- options


@dataclass
class SynthesizeOptions:
    per_seed: int = option(4, help="Variants to make per selected seed task (0: write an empty candidates file).")
    iteration: int = option(0, help="Loop iteration n; candidates become trainable from n + 1.")
    writer: str = option("template", help="How user turns are written: template (deterministic), or llm (a policy rewrites each template turn; a rewrite is kept only when the critic passes it).")
    policy: str | None = option(None, help="llm writer: the policy checkpoint that rewrites (any Hugging Face checkpoint directory).")
    backend: str = option("hf", help="llm writer: the rollout backend that runs the policy (hf, vllm, openai).")
    tolerance: float = option(0.15, help="Largest accepted profile distance between a candidate and its seed (0..1).")
    max_jaccard: float = option(0.7, help="Reject a candidate whose call-sequence Jaccard similarity to a known task or accepted candidate is at least this.")
    attempts: int = option(8, help="Attempts per requested variant (each on a new world) before giving up on it.")
    repairs: int = option(4, help="Re-groundings of one failing call within an attempt (bounded repair).")
    swap: float = option(0.3, help="Chance that a leaf step (nothing flows in or out) is done by another tool of its class, drawn from the API graph.")
    seed: int = option(0, help="Seed of the world, entity and wording choices.")


# ------------------------------------------------------------------------------- JSON paths


_FIELD = re.compile(r"^[a-z][a-z0-9_]*$")


def _is_collection(node: Any) -> bool:
    """A dict keyed by entities (a wildcard level), not a record keyed by field names.

    Either every value is a record (customers by id, a folder's contents), or every value
    has one scalar type and some key is data rather than a field name (a name -> id map,
    discount codes -> percent, product ids -> quantity).
    """
    if not isinstance(node, dict) or not node:
        return False
    values = list(node.values())
    if all(isinstance(v, dict) for v in values):
        return True
    first = type(values[0])
    return first in (str, int, float) and all(type(v) is first for v in values) and \
        any(not (isinstance(k, str) and _FIELD.match(k)) for k in node)


def _mask(root: Any, path: tuple) -> tuple:
    """Which steps of a concrete path are wildcards (collection keys, list indices)."""
    mask, node = [], root
    for depth, step in enumerate(path):
        mask.append(isinstance(node, list) or (depth > 0 and _is_collection(node)))
        node = node[step]
    return tuple(mask)


def index_paths(root: Any, values: set[str], limit: int = MAX_PATHS) -> dict[str, list[tuple[tuple, tuple, bool]]]:
    """Every place (up to `limit`) where each of several strings occurs in the state, as a
    value or a dict key: (concrete path, wildcard mask, value-is-a-dict-key), in one walk
    (masks only for the hits; see `FirstPaths` for the mask)."""
    found: dict[str, list] = {v: [] for v in values}

    def walk(node: Any, path: tuple) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        is_dict = isinstance(node, dict)
        for k, v in items:
            if is_dict and k in found and len(found[k]) < limit:
                found[k].append(((*path, k), True))
            if isinstance(v, dict | list):
                walk(v, (*path, k))
            elif type(v) is str and v in found and len(found[v]) < limit:
                found[v].append(((*path, k), False))

    walk(root, ())
    return {v: [(p, _mask(root, p), is_key) for p, is_key in hits] for v, hits in found.items()}


class FirstPaths:
    """Where values first occur in parsed results: (concrete path, wildcard mask, value-is-a-dict-key).

    Each result is walked once (depth first, a dict's key before its value), on first use.
    The mask marks the path steps that are wildcards (keys of a collection, list indices);
    the top level is never a wildcard. A value is found as itself (the same type and
    value; a string also as a dict key) or `loose`, the way Phi matches values, as the text
    the model sees (the number 6500.0 is the string "6500"; keys do not count).
    """

    def __init__(self, parsed: list[Any]):
        self.parsed = parsed
        self.tables: dict[int, tuple[dict, dict]] = {}

    def first(self, i: int, value: Any, loose: bool = False) -> tuple[tuple, tuple, bool] | None:
        tables = self.tables.get(i)
        if tables is None:
            tables = self.tables[i] = self._walk(self.parsed[i])
        return tables[1].get(value_key(value)) if loose else tables[0].get((type(value), value))

    @staticmethod
    def _walk(root: Any) -> tuple[dict, dict]:
        same: dict = {}  # (type, value) -> first hit
        text: dict = {}  # value_key -> first hit (scalars other than booleans and null)

        def walk(node: Any, path: tuple, mask: tuple) -> None:
            if isinstance(node, dict):
                wild = bool(path) and _is_collection(node)
                inner = (*mask, wild)
                for k, v in node.items():
                    if type(k) is str and (str, k) not in same:
                        same[(str, k)] = ((*path, k), inner, True)
                    walk(v, (*path, k), inner)
            elif isinstance(node, list):
                inner = (*mask, True)
                for i, v in enumerate(node):
                    walk(v, (*path, i), inner)
            else:
                kind, hit = type(node), (path, mask, False)
                same.setdefault((kind, node), hit)
                if kind is str:  # value_key of a string is itself
                    text.setdefault(node, hit)
                elif kind is not bool and node is not None:
                    text.setdefault(value_key(node), hit)

        walk(root, (), ())
        return same, text


def follow(root: Any, path: Iterable) -> Any:
    node = root
    for step in path:
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            node = node[step]
        else:
            raise KeyError(step)
    return node


def expand(root: Any, path: tuple, mask: tuple, is_key: bool, start: int = 0) -> list[tuple[tuple, Any]]:
    """Every (concrete path, value) matching the pattern from step `start` on (wildcards free)."""
    out: list[tuple[tuple, Any]] = []

    def walk(node: Any, i: int, done: tuple) -> None:
        if i == len(path):
            out.append((done, done[-1] if is_key else node))
            return
        if mask[i]:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, i + 1, (*done, k))
            elif isinstance(node, list):
                for j, v in enumerate(node):
                    walk(v, i + 1, (*done, j))
        elif isinstance(node, dict) and path[i] in node:
            walk(node[path[i]], i + 1, (*done, path[i]))
        elif isinstance(node, list) and isinstance(path[i], int) and path[i] < len(node):
            walk(node[path[i]], i + 1, (*done, path[i]))

    try:
        base = follow(root, path[:start])
    except KeyError:
        return out
    walk(base, start, tuple(path[:start]))
    return out


def _parse(text: str) -> Any:
    if text[:1] in ("{", "["):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
    return None


# ------------------------------------------------------------------------------- the plan


@dataclass
class Source:
    """Where a plan step's argument value comes from (see module doc)."""

    kind: str  # flow | state | literal | keep | list
    call: int = -1  # flow: index of the producing call
    path: tuple = ()  # flow: path in its result; state: concrete path in the seed's live state
    mask: tuple = ()
    is_key: bool = False
    link: tuple[str, int] | None = None  # state: (argument, shared prefix length) bound jointly with
    hits: list = field(default_factory=list)  # state: every place the seed's value occurs
    shape: str | None = None  # state, a key: the kind of entity it names (see `shape`)
    parts: list = field(default_factory=list)  # list: one source per element (flow or keep)
    cast: str | None = None  # flow: the seed's value was this type's text of the result's value


@dataclass
class Step:
    turn: int
    name: str
    arguments: dict
    sources: dict[str, Source]
    index: int = 0  # position in the plan (call order across turns)
    order: list[str] | None = field(default=None, repr=False)  # grounding order (see Grounder.ground)


@dataclass
class Plan:
    """A seed read as a plan: its steps, turn structure and profile."""

    seed: dict
    steps: list[Step]
    n_turns: int
    profile: dict
    mutated: list[bool]  # whether each seed call changed its owner's state (Phi's state edges hang on it)
    occurrence: list[int] = field(default_factory=list)  # each step: how many earlier steps call the same tool
    offered: dict[int, set[str]] = field(default_factory=dict)  # turn -> the tool names offered (see `offered_at`)

    def offered_at(self, task: dict, ep: Episode, turn: int) -> set[str]:
        """The tools offered at `turn` in an episode of `task`: kept when the task has the
        seed's tools, withheld tools and environment (a variant shares them)."""
        if all(task.get(k) is self.seed.get(k) for k in ("tools", "withheld", "env_config", "env")):
            names = self.offered.get(turn)
            if names is None:
                names = self.offered[turn] = {tool_name(t) for t in offered_tools(task, ep, turn)}
            return names
        return {tool_name(t) for t in offered_tools(task, ep, turn)}


def _enum_args(schema: dict) -> set[str]:
    props = (schema.get("function", schema).get("parameters") or {}).get("properties") or {}
    return {k for k, p in props.items() if "enum" in p}


def make_plan(seed: dict) -> Plan:
    """Read the seed's reference as a plan: execute it step by step and bind every argument."""
    ep = open_episode(seed)
    states = ClassStates(ep)
    changes: list[bool | None] = []  # each call: whether it changed its class's state (None: unknown)
    try:
        index = ep.tool_index()
        steps: list[Step] = []
        parsed: list[Any] = []
        found = FirstPaths(parsed)
        for turn, calls in enumerate(seed["reference"]):
            offered = {tool_name(t) for t in offered_tools(seed, ep, turn)}
            for c in calls:
                enums = _enum_args(index.get(c["name"], {}))
                wanted = {v for v in c["arguments"].values() if isinstance(v, str) and nontrivial(v)}
                live = live_state(ep, None, states) if wanted else None  # state sources are such strings
                in_state = index_paths(live, wanted) if wanted else {}
                sources: dict[str, Source] = {}
                for arg, value in c["arguments"].items():
                    sources[arg] = _bind(arg, value, enums, found, in_state)
                _link(sources)
                for src in sources.values():
                    if src.kind == "state" and src.is_key:
                        src.shape = shape(follow(live, src.path))
                steps.append(Step(turn, c["name"], c["arguments"], sources, len(steps)))
                saved = states.before(c["name"])
                out = ep.call(c["name"], c["arguments"], offered)
                after = states.after(saved[0]) if saved is not None else None
                changes.append(None if after is None else after != saved[1])  # type: ignore[index]
                parsed.append(_parse(out.result or "") if out.ok else None)
    finally:
        ep.close()
    profile = seed.get("profile")
    if profile and all(m is not None for m in changes):
        mutated = [bool(m) for m in changes]  # what Phi's trace says, from the run above
    else:
        trace = trace_calls(seed)
        profile = profile or compute_profile(seed, trace)
        mutated = [m for turn in trace.mutated for m in turn]
    seen: Counter = Counter()
    occurrence = []
    for st in steps:
        occurrence.append(seen[st.name])
        seen[st.name] += 1
    return Plan(seed, steps, len(seed["reference"]), profile, mutated, occurrence)


def _flow_source(value: Any, parsed: FirstPaths, any_value: bool = False) -> Source | None:
    """The latest earlier result holding `value` (as Phi finds flow edges), or None.

    A small number flows only from an id field (a ticket id 2), not by accident, unless
    `any_value` (an element of a list whose other elements flow: the counts to average).
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    for loose in (False, True):  # the same value first, then the same text (a count as a string)
        for i in range(len(parsed.parsed) - 1, -1, -1):
            if parsed.parsed[i] is not None:
                hit = parsed.first(i, value, loose)
                if hit and (any_value or nontrivial(value) or _id_field(hit[0])):
                    path, mask, is_key = hit
                    return Source("flow", call=i, path=path, mask=mask, is_key=is_key,
                                  cast=type(value).__name__ if loose else None)
    return None


def _bind(arg: str, value: Any, enums: set[str], parsed: FirstPaths, in_state: dict[str, list]) -> Source:
    if arg in enums or isinstance(value, bool) or value is None:
        return Source("keep")
    if isinstance(value, list) and value:
        parts = [_flow_source(v, parsed) for v in value]
        if any(parts):
            parts = [p or _flow_source(v, parsed, any_value=True) or Source("keep") for p, v in zip(parts, value, strict=True)]
            return Source("list", parts=parts)
    flow = _flow_source(value, parsed)
    if flow is not None:
        return flow
    if isinstance(value, str) and nontrivial(value):
        # an attribute of the world itself (an access token, the logged-in user) first,
        # then entities in collections, then anything else
        hits = sorted(in_state.get(value, ()), key=lambda h: 0 if len(h[0]) <= 2 else (1 if any(h[1]) else 2))
        if hits:
            path, mask, is_key = hits[0]
            return Source("state", path=path, mask=mask, is_key=is_key, hits=hits)
    return Source("literal")


def _id_field(path: tuple) -> bool:
    return bool(path) and isinstance(path[-1], str) and path[-1].lower().endswith("id")


def shape(record: Any) -> str:
    """What kind of entity a record is (its class or type tag and its fields): a file is no folder."""
    if isinstance(record, dict):
        tag = record.get("__class__") or record.get("type")
        return f"{tag}:{','.join(sorted(map(str, record)))}"
    return type(record).__name__


def _shared(p: tuple, q: tuple) -> int:
    n = 0
    while n < min(len(p), len(q)) and p[n] == q[n]:
        n += 1
    return n


def _link(sources: dict[str, Source]) -> None:
    """Arguments of one call whose state paths can run through the same entity are bound jointly.

    Each value may occur at several places (a folder name is in the folder list and in
    every file of it); the place chosen for a linked argument is the one sharing the
    longest prefix, through a wildcard, with an anchor (the file whose name is also given).
    Arguments with the fewest places are anchored first.
    """
    anchors: list[str] = []
    for arg in sorted((a for a, s in sources.items() if s.kind == "state"), key=lambda a: len(sources[a].hits)):
        src = sources[arg]
        best = None
        for other in anchors:
            o = sources[other]
            for path, mask, is_key in src.hits:
                n = _shared(o.path, path)
                if any(mask[:n]) and (best is None or n > best[0]):
                    best = (n, other, path, mask, is_key)
        if best is None:
            anchors.append(arg)
            continue
        n, other, src.path, src.mask, src.is_key = best
        src.link = (other, n)


# ------------------------------------------------------------------------------- the API graph


@dataclass
class ApiGraph:
    """What the reference calls of known tasks say about each tool and argument.

    `calls[tool]` holds the argument sets seen in reference calls: literal arguments are
    drawn from them, all the literals of one call from one observed call, so that values
    that only make sense together (a route's two cities, a currency pair) stay together.
    `literals[(tool, arg)]` is the per-argument pool used when no observed call has every
    needed argument. `feeds[(producer, consumer, arg)]` counts flow edges, which outputs
    feed which arguments (mined when plans are built).
    """

    calls: dict[str, list[dict]] = field(default_factory=dict)
    sequences: dict[str, list[list[dict]]] = field(default_factory=dict)  # tool -> per task, its calls in order
    literals: dict[tuple[str, str], list] = field(default_factory=dict)
    feeds: Counter = field(default_factory=Counter)
    _fits: dict = field(default_factory=dict, repr=False)  # (tool, literal arguments) -> observed calls that have them
    _donors: dict = field(default_factory=dict, repr=False)  # (tool, k) -> the tasks' sequences with a k-th call of it

    @classmethod
    def mine(cls, tasks: Iterable[dict]) -> ApiGraph:
        seen: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
        calls: dict[str, dict[str, dict]] = defaultdict(dict)
        sequences: dict[str, dict[bytes, list[dict]]] = defaultdict(dict)
        for t in tasks:
            per_tool: dict[str, list[dict]] = defaultdict(list)
            for turn in t["reference"]:
                for c in turn:
                    per_tool[c["name"]].append(c["arguments"])
                    calls[c["name"]].setdefault(orjson.dumps(c["arguments"], option=orjson.OPT_SORT_KEYS).decode(), c["arguments"])
                    for arg, value in c["arguments"].items():
                        if isinstance(value, str | int | float) and not isinstance(value, bool):
                            seen[(c["name"], arg)].setdefault(orjson.dumps(value).decode(), value)
            for name, seq in per_tool.items():
                sequences[name].setdefault(orjson.dumps(seq, option=orjson.OPT_SORT_KEYS), seq)
        # sorted by their JSON text: the pools do not depend on task order
        return cls(calls={k: [v[s] for s in sorted(v)] for k, v in calls.items()},
                   sequences={k: [v[s] for s in sorted(v)] for k, v in sequences.items()},
                   literals={k: [v[s] for s in sorted(v)] for k, v in seen.items()})

    def draw_literals(self, tool: str, wanted: dict[str, Any], rng: random.Random,
                      occurrence: int = 0, donors: dict[str, list[dict]] | None = None) -> dict[str, Any]:
        """Values for the literal arguments `wanted` (name -> the seed's value), from one observed call if possible.

        The k-th call of a tool in a plan takes the k-th call of that tool in one donor task
        (kept in `donors` for the whole plan), so that values that work only together
        across calls (the two cities whose distance is then asked) come from one task.
        """
        if donors is not None:
            seq = donors.get(tool)
            if seq is None:
                options = self._donors.get((tool, occurrence))
                if options is None:
                    options = self._donors[(tool, occurrence)] = [q for q in self.sequences.get(tool, ()) if len(q) > occurrence]
                seq = donors[tool] = rng.choice(options) if options else []
            if len(seq) > occurrence and all(a in seq[occurrence] and type(seq[occurrence][a]) is type(v)
                                             for a, v in wanted.items()):
                return {a: seq[occurrence][a] for a in wanted}
        need = (tool, tuple(sorted((a, type(v).__name__) for a, v in wanted.items())))
        fits = self._fits.get(need)
        if fits is None:
            fits = [c for c in self.calls.get(tool, ()) if all(a in c and type(c[a]) is type(v) for a, v in wanted.items())]
            self._fits[need] = fits
        if fits:
            pick = rng.choice(fits)
            return {a: pick[a] for a in wanted}
        out = {}
        for a, v in wanted.items():
            pool = [x for x in self.literals.get((tool, a), ()) if type(x) is type(v)] or [v]
            out[a] = rng.choice(pool)
        return out

    def add_plan(self, plan: Plan) -> None:
        for step in plan.steps:
            for arg, src in step.sources.items():
                if src.kind == "flow":
                    self.feeds[(plan.steps[src.call].name, step.name, arg)] += 1


# ------------------------------------------------------------------------------- worlds


def _world_pool(tasks: Iterable[dict]) -> dict[tuple, list[dict]]:
    """Known initial states by (env, domain, env_config): the worlds non-builtin variants run in."""
    pool: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for t in tasks:
        if t["env"] == "builtin":
            continue
        key = (t["env"], t["domain"], orjson.dumps(t.get("env_config") or {}, option=orjson.OPT_SORT_KEYS))
        pool[key].setdefault(state_hash(t["initial_state"]), t["initial_state"])
    return {k: [v[h] for h in sorted(v)] for k, v in pool.items()}


WORLDS = 64  # generated worlds per built-in domain and size in one run (a variant draws one)


@functools.lru_cache(maxsize=4 * WORLDS)
def generated_world(domain: str, large: bool, index: int, seed: int) -> dict:
    """World number `index` of a built-in domain: made once per run, shared read-only by the
    variants that draw it (every episode works on its own copy)."""
    from rodscli.envs.builtin.seeds import _domain_module

    return _domain_module(domain).world(random.Random(f"rods-synth-world:{seed}:{domain}:{large}:{index}"), large=large)


def new_world(seed: dict, rng: random.Random, pool: dict[tuple, list[dict]], attempt: int,
              world_seed: int = 0) -> tuple[dict, str]:
    """A fresh initial state for a variant of `seed`, and where it came from."""
    if seed["env"] == "builtin":
        large = seed["skill"] == "long_context"
        index = rng.randrange(WORLDS)
        return generated_world(seed["domain"], large, index, world_seed), f"generated:{index}"
    key = (seed["env"], seed["domain"], orjson.dumps(seed.get("env_config") or {}, option=orjson.OPT_SORT_KEYS))
    worlds = pool.get(key) or []
    # every other attempt stays in the seed's own world: some plans need exactly its entities
    if worlds and attempt % 2 == 0:
        return rng.choice(worlds), "pool"
    return seed["initial_state"], "seed"


# ------------------------------------------------------------------------------- grounding and execution


_SCALARS = frozenset((str, int, float, bool, type(None)))


def _memo_key(value: Any) -> Any:
    """The seed's value as a dict key: scalars as (type, value) so that 1, 1.0 and True stay apart."""
    if type(value) in _SCALARS or isinstance(value, str | int | float | bool):
        return (type(value), value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


class StepFailed(Exception):
    def __init__(self, message: str, tool: str = ""):
        super().__init__(message)
        self.tool = tool  # the step's tool, when a call of it failed

    def cause(self) -> str:
        """Tool and reason in a few words (the simulator's error message when it gave one)."""
        text = str(self)
        parsed = _parse(text)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            text = parsed["error"]
        return f"{self.tool}: {text[:80]}" if self.tool else text[:80]


class CyclicState(StepFailed):
    pass


@dataclass
class Grounder:
    """Grounds one plan on one live episode (state read at each call)."""

    plan: Plan
    graph: ApiGraph
    rng: random.Random
    keep_literals: bool = False  # literal arguments keep the seed's values (the last restart)
    memo: dict[Any, Any] = field(default_factory=dict)  # seed value (see _memo_key) -> variant value
    donors: dict[str, list[dict]] = field(default_factory=dict)  # tool -> the donor task's calls of it
    parsed: list[Any] = field(default_factory=list)  # variant results, parsed
    states: ClassStates | None = None  # the episode's class states (options kept per state)

    def ground(self, step: Step, read: Callable[[], Any], fresh: bool) -> dict:
        """The step's arguments; `read()` gives the live state (read only when an argument needs it)."""
        chosen: dict[str, Any] = {}
        live: Any = None
        paths: dict[str, tuple] = {}
        literal: dict[str, Any] = {}  # literal arguments still to draw: name -> the seed's value
        # anchors before the arguments linked to them
        if step.order is None:
            step.order = sorted(step.arguments, key=lambda a: step.sources[a].link is not None)
        for arg in step.order:
            value, src = step.arguments[arg], step.sources[arg]
            key = _memo_key(value) if src.kind not in ("keep", "flow", "list") else None
            if src.kind == "keep":
                chosen[arg] = value
            elif src.kind == "flow":
                chosen[arg] = self._flow(step, arg, src)
            elif src.kind == "list":
                chosen[arg] = [self._flow(step, arg, p) if p.kind == "flow" else v for p, v in zip(src.parts, value, strict=True)]
            elif key in self.memo and not fresh:
                chosen[arg] = self.memo[key]
            elif src.kind == "state":
                path, mask = list(src.path), list(src.mask)
                start = 0
                if src.link is not None and src.link[0] in paths:
                    start = src.link[1]
                    path[:start] = paths[src.link[0]][:start]
                # a step of the path that names something already chosen (the folder the
                # agent moved into) stays that choice: cd(X) then cp(a file of X)
                for i in range(start, len(path) - (1 if src.is_key else 0)):
                    pinned = self.memo.get(_memo_key(path[i])) if mask[i] else None
                    if pinned is not None:
                        path[i], mask[i] = pinned, False
                if live is None:
                    live = read()
                options = self._options(live, tuple(path), tuple(mask), src, start, type(value))
                if not options:  # this world has no such entity: a value the API graph has seen
                    literal[arg] = value
                    continue
                # distinct entities in the seed stay distinct (two products stay two), else
                # an accidental flow edge changes Phi; and prefer something other than the seed's
                taken = {_memo_key(v) for k, v in self.memo.items() if k != key}
                if type(value) in _SCALARS:  # every option has the seed's type: its key is (type, value)
                    fresh_options = [o for o in options if (type(value), o[1]) not in taken] or options
                else:
                    fresh_options = [o for o in options if _memo_key(o[1]) not in taken] or options
                different = [o for o in fresh_options if o[1] != value]
                p, v = self.rng.choice(different or fresh_options)
                chosen[arg], paths[arg] = v, p
            else:
                literal[arg] = value
                continue
            if src.kind == "state":
                self.memo[key] = chosen[arg]
        if literal:
            if fresh:  # a repair: another donor for this tool
                self.donors.pop(step.name, None)
            drawn = dict(literal) if self.keep_literals else \
                self.graph.draw_literals(step.name, literal, self.rng, self.plan.occurrence[step.index], self.donors)
            for arg, v in drawn.items():
                chosen[arg] = v
                self.memo[_memo_key(literal[arg])] = v
        return {arg: chosen[arg] for arg in step.arguments}

    def _options(self, live: Any, path: tuple, mask: tuple, src: Source, start: int, kind: type) -> list:
        """The entities of the live state a state argument may name: (path, value) for every
        match of the pattern whose value has the seed's type and whose entity has the seed's
        shape; kept per class state (by its bytes) when `states` is given."""
        blob = self.states.blob(path[0]) if self.states is not None and path else None
        key = (path[0], blob, path, mask, src.is_key, start, kind, src.shape) if blob is not None else None
        options = self.states.views.get(key) if key is not None else None  # type: ignore[union-attr]
        if options is None:
            options = [(p, v) for p, v in expand(live, path, mask, src.is_key, start) if type(v) is kind
                       and (src.shape is None or shape(follow(live, p)) == src.shape)]
            if key is not None:
                self.states.keep(key, options)  # type: ignore[union-attr]
        return options

    def _flow(self, step: Step, arg: str, src: Source) -> Any:
        """The value at the same place in the producing call's new result."""
        node = self.parsed[src.call]
        try:
            if not src.is_key:
                value = follow(node, src.path)
                if isinstance(value, dict | list):
                    return copy.deepcopy(value)  # results are shared (see execute): never handed out
                return value_key(value) if src.cast == "str" else value
            parent = follow(node, src.path[:-1])
        except KeyError:
            raise StepFailed(f"{step.name}.{arg}: the result of call {src.call} has no {list(src.path)}") from None
        keys = sorted(parent) if isinstance(parent, dict) else []
        if not keys:
            raise StepFailed(f"{step.name}.{arg}: the result of call {src.call} has no keys at {list(src.path[:-1])}")
        return src.path[-1] if src.path[-1] in keys else self.rng.choice(keys)


_FAMILIES: dict[type, str] = {}


def _family(ep: Episode) -> str:
    """builtin, bfcl or other: by the episode's class (isinstance on these ABCs is slow)."""
    family = _FAMILIES.get(type(ep))
    if family is None:
        from rodscli.envs.bfcl import BFCLEpisode
        from rodscli.envs.builtin import BuiltinEpisode

        family = _FAMILIES[type(ep)] = "builtin" if isinstance(ep, BuiltinEpisode) else \
            "bfcl" if isinstance(ep, BFCLEpisode) else "other"
    return family


def live_state(ep: Episode, owners: set | None = None, states: ClassStates | None = None) -> Any:
    """The state to ground in, read now; `owners` limits it to those classes.

    A built-in simulator's attributes are JSON data already (read as they are, never
    written); a BFCL class is converted alone, or, with `states`, taken from its views (the
    conversion of each class state met, by its bytes); any other episode gives its snapshot.
    """
    def public(obj: Any) -> dict:
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}

    family = _family(ep)
    try:
        if family == "builtin":
            return {name: public(obj) for name, obj in ep.instances.items()}  # type: ignore[attr-defined]
        if family == "bfcl" and (owners is not None or states is not None):
            states = ClassStates(ep) if states is None else states
            return {name: states.view(name) for name in sorted(ep.instances if owners is None else owners)
                    if name in ep.instances}
        return ep.snapshot()
    except RecursionError:  # a call made the simulator's state cyclic (a folder moved into itself)
        raise CyclicState("the state became cyclic") from None


@dataclass
class FinalState:
    """An episode's state after its last call: each class's bytes (see ClassStates; None
    for other episodes), and the hash of its public state, computed when first asked."""

    blobs: dict[str, bytes] | None
    read: Callable[[], str]
    _hash: str | None = None

    def hash(self) -> str:
        if self._hash is None:
            self._hash = self.read()
        return self._hash

    def same(self, ep: Episode, views: dict | None = None) -> bool:
        """Whether `ep` is in this state: the same bytes of every class, else the same hash."""
        states = ClassStates(ep, views)
        if self.blobs is not None and {name: states.blob(name) for name in states.instances} == self.blobs:
            return True
        return _final_hash(ep, states) == self.hash()


@dataclass
class Execution:
    """A plan grounded and executed: the reference per turn, each call's result, the final state."""

    reference: list[list[dict]]
    results: list[str]
    final: FinalState
    repairs: int
    kinds: dict
    tools: dict[str, dict]  # tool name -> schema
    parsed: list[Any]  # each call's result as JSON data (None for plain text)
    steps: list[Step]  # the steps as done (a leaf step may have been done by another tool)
    mutated: list[bool | None]  # each call: whether it changed its class's state (None: unknown)
    owners: list[str]  # each call: the class it ran on
    dirty: bool = False  # a failed call changed state (or may have): the kept calls ran on states no replay sees

    def call_trace(self) -> CallTrace | None:
        """The executed calls as Phi's CallTrace, when every state change is known: a
        generation whose failed calls changed no state (and whose undone calls were undone)
        ran its kept calls on the states a replay runs them on."""
        if self.dirty or any(m is None for m in self.mutated):
            return None
        trace, k = CallTrace(), 0
        for turn in self.reference:
            n = len(turn)
            trace.results.append(self.results[k:k + n])
            trace.errors.append([None] * n)
            trace.mutated.append([bool(m) for m in self.mutated[k:k + n]])
            trace.owners.append(self.owners[k:k + n])
            k += n
        return trace


class ClassStates:
    """Each class's state as bytes (see `_dump`: cycles, objects and private attributes
    included), kept after every call: the state before a call is the one after the last
    call on its class (a call changes only the class it runs on, as Phi assumes), so each
    call is serialized once. The bytes tell whether a call changed state, undo it, and
    tell a repeat of a known call on a known state."""

    def __init__(self, ep: Episode, views: dict | None = None):
        self.ep = ep
        self.instances = getattr(ep, "instances", None) or {}
        self.views = {} if views is None else views  # (class, state bytes) -> its public state as JSON data
        self.owners: dict[str, str] = {}  # tool -> the class it runs on
        self.json = _family(ep) == "builtin"  # a built-in simulator's state is JSON data
        # a fresh BFCL episode knows the bytes it was unpickled from
        loaded = getattr(ep, "initial_states", None) if not self.json else None
        self.blobs: dict[str, bytes] = {name: b"p" + blob for name, blob in loaded.items()} if loaded else {}

    def before(self, name: str) -> tuple[str, bytes] | None:
        """The class `name` runs on and its state now, or None (no class, or unpicklable)."""
        owner = self.owners.get(name)
        if owner is None:
            from rodscli.profile import call_owner

            owner = self.owners[name] = call_owner(self.ep, name)
        if owner not in self.instances:
            self.blobs.clear()  # a call outside the classes: any of them may change
            return None
        blob = self.blob(owner)
        return None if blob is None else (owner, blob)

    def blob(self, owner: str) -> bytes | None:
        blob = self.blobs.get(owner)
        if blob is None:
            blob = self._dump(owner)
            if blob is not None:
                self.blobs[owner] = blob
        return blob

    def view(self, owner: str) -> Any:
        """A BFCL class's public state as JSON data (read-only: shared by equal states)."""
        from rodscli.envs.bfcl import _state

        blob = self.blob(owner)
        key = (owner, blob) if blob is not None else None
        view = self.views.get(key) if key else None
        if view is None:
            view = _state({k: v for k, v in vars(self.instances[owner]).items() if not k.startswith("_")})
            if key:
                self.keep(key, view)
        return view

    def keep(self, key: tuple, value: Any) -> Any:
        """Remember something derived from a class state (keyed by the state's bytes)."""
        if len(self.views) >= VIEWS:
            self.views.clear()
        self.views[key] = value
        return value

    def after(self, owner: str) -> bytes | None:
        """The class's state after a call (None: it became unpicklable)."""
        blob = self._dump(owner)
        if blob is None:
            self.blobs.pop(owner, None)
        else:
            self.blobs[owner] = blob
        return blob

    def restore(self, owner: str, blob: bytes) -> None:
        state = orjson.loads(blob[1:]) if blob[:1] == b"j" else pickle.loads(blob[1:])
        attrs = vars(self.instances[owner])
        attrs.clear()
        attrs.update(state)
        self.blobs[owner] = blob

    def _dump(self, owner: str) -> bytes | None:
        state = vars(self.instances[owner])
        try:
            if self.json:  # orjson is several times faster than pickle
                return b"j" + orjson.dumps(state)
            return b"p" + pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an unpicklable attribute: no undo, the profile filter still checks
            return None


def leaf_steps(plan: Plan) -> set[int]:
    """Steps another tool may stand in for: no argument flows in, no result flows out, not withheld."""
    feeds = {src.call for step in plan.steps for src in step.sources.values() if src.kind == "flow"}
    withheld = {w["tool"] for w in plan.seed.get("withheld") or []}
    return {s.index for s in plan.steps
            if s.index not in feeds and s.name not in withheld
            and all(src.kind in ("literal", "keep") for src in s.sources.values())}


def substitute(step: Step, ep: Episode, offered: set[str], graph: ApiGraph, avoid: set[str],
               rng: random.Random) -> Step | None:
    """Plan over the API graph: another tool of the same class, with the arguments of one of
    its observed calls, in place of a leaf step (Phi does not count tool names; the profile
    filter checks that the shape held)."""
    from rodscli.profile import call_owner

    owner = call_owner(ep, step.name)
    options = sorted(t for t in offered if t != step.name and t not in avoid and graph.calls.get(t)
                     and call_owner(ep, t) == owner)
    if not options:
        return None
    name = rng.choice(options)
    args = dict(rng.choice(graph.calls[name]))
    return Step(step.turn, name, args, {a: Source("literal") for a in args}, step.index)


def _call_key(name: str, args: dict) -> bytes | None:
    try:
        return name.encode() + orjson.dumps(args, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return None


def execute(plan: Plan, task: dict, graph: ApiGraph, rng: random.Random, repairs: int,
            keep_literals: bool = False, swap: float = 0.0, outcomes: dict | None = None,
            views: dict | None = None) -> Execution:
    """Ground and execute the plan on a fresh episode of `task`; raises StepFailed when a
    call still fails after `repairs` re-groundings. A leaf step is done by another tool
    with probability `swap` (falling back to its own tool when that fails).

    `outcomes` (kept by the caller across executions) remembers each call's outcome and
    the state it left, by the call and the state of its class before it: the simulators
    are deterministic in their class state (every attribute, random generators included),
    so a call met before (a repair that grounds it again, a restart or another attempt in
    the same world) is not run again. `views` keeps class states converted for grounding
    across executions (see ClassStates.view)."""
    g = Grounder(plan, graph, rng, keep_literals)
    reference: list[list[dict]] = [[] for _ in range(plan.n_turns)]
    results: list[str] = []
    done: list[Step] = []
    n_repairs = 0
    dirty = False
    kinds: Counter = Counter()
    leaves = leaf_steps(plan) if swap else set()
    mutated: list[bool | None] = []  # each executed call: did it change its class (None: unknown)
    call_owners: list[str] = []
    avoid = {w["tool"] for w in task.get("withheld") or []}
    # (call, class state) -> the failure's message, or whether the call (done and undone) changed state
    outcomes = {} if outcomes is None else outcomes
    MISMATCH = "the call changed state where the seed's did not, or the other way round"
    ep: Episode = open_episode(task)
    states = g.states = ClassStates(ep, views)
    try:
        turn, offered = -1, set()
        for step in plan.steps:
            if step.turn != turn:
                turn, offered = step.turn, plan.offered_at(task, ep, step.turn)
            owners = {s.path[0] for s in step.sources.values() if s.kind == "state"}
            last = "no attempt"
            alt = substitute(step, ep, offered, graph, avoid, rng) if step.index in leaves and rng.random() < swap else None
            for attempt in range(repairs + 1):
                if alt is not None:
                    used, args = alt, alt.arguments
                else:
                    used = step
                    try:
                        args = g.ground(step, functools.partial(live_state, ep, owners, states), fresh=attempt > 0)
                    except CyclicState:
                        raise
                    except StepFailed as exc:
                        last = str(exc)
                        n_repairs += attempt > 0
                        continue
                saved = states.before(used.name)
                # the same call on the same class state (offered or not) gives the same outcome
                # and leaves the same state: a call met before is not run again
                key = None
                if saved is not None:
                    call = _call_key(used.name, args)
                    key = (call, saved[1], used.name in offered) if call is not None else None
                known = outcomes.get(key) if key is not None else None
                if known is None:
                    out = ep.call(used.name, args, offered)
                    after = states.after(saved[0]) if saved is not None else None
                    parsed = _parse(out.result or "") if out.ok else None  # read only from here on
                    if key is not None and after is not None:
                        outcomes[key] = (out, after, parsed)
                else:
                    out, after, parsed = known
                changed = after is None or after != saved[1]  # type: ignore[index]
                if out.ok and not (isinstance(parsed, dict) and "error" in parsed):
                    # the seed's call changed state (or did not): so must this one, or Phi's
                    # state edges differ (adding a stock already on the watchlist changes nothing)
                    if after is None or attempt == repairs or changed == plan.mutated[step.index]:
                        if known is not None and changed:
                            states.restore(saved[0], after)  # type: ignore[index] - the state it leaves
                        break
                    if known is None:
                        states.restore(saved[0], saved[1])  # type: ignore[index] - undone
                    last = MISMATCH
                    n_repairs += 1
                    alt = None
                    continue
                # BFCL's simulators report refusals as {"error": ...} results: a failed call too
                last = out.result or out.error or "error"
                if known is not None and changed:
                    states.restore(saved[0], after)  # type: ignore[index] - the state it leaves
                dirty = dirty or changed
                n_repairs += 1
                alt = None
            else:
                raise StepFailed(last, step.name)
            reference[step.turn].append({"name": used.name, "arguments": args})
            results.append(out.result or "")
            g.parsed.append(parsed)
            done.append(used)
            mutated.append(None if after is None else changed)
            call_owners.append("" if saved is None else saved[0])
            for src in used.sources.values():
                kinds[src.kind] += 1
            if used is not step:
                kinds["swapped"] += 1
        if _family(ep) == "other":  # its state may not outlive the episode
            digest = _final_hash(ep, states)
            final = FinalState(None, lambda: digest)
        else:  # the simulators stay readable after close
            blobs = {name: states.blob(name) for name in states.instances}
            final = FinalState(None if None in blobs.values() else blobs,  # type: ignore[arg-type]
                               functools.partial(_final_hash, ep, states))
        tools = dict(ep.tool_index())
    finally:
        ep.close()
    return Execution(reference, results, final, n_repairs, dict(kinds), tools, g.parsed, done, mutated, call_owners, dirty)


# ------------------------------------------------------------------------------- the template writer


def _phrase(schema: dict) -> str:
    desc = (schema.get("function", schema).get("description") or "").strip()
    desc = desc.split("Tool description:", 1)[-1].strip().split("\n")[0]  # BFCL puts the class blurb first
    desc = desc.split(". ")[0].split(";")[0].rstrip(".").strip()
    if not desc:
        return tool_name(schema).replace("_", " ")
    return desc[0].lower() + desc[1:]


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    return orjson.dumps(value).decode()


ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


def _pick_phrase(src: Source, results: list[Any]) -> str | None:
    """How the user points at an entry of an earlier listing: by a field only it has, else by position.

    None when the value is not picked from a list (an id given back for the one entity asked about).
    """
    where = [i for i, step in enumerate(src.path) if isinstance(step, int)]
    if not where:
        return None
    cut = where[-1]
    try:
        siblings = follow(results[src.call], src.path[:cut])
        record = siblings[src.path[cut]]
    except (KeyError, TypeError, IndexError):
        return None
    if len(siblings) == 1:
        return "the only one listed"
    if not isinstance(record, dict):
        return ""  # a plain listing of names: the value itself is what the user says
    for f, v in record.items():
        if f == (src.path[cut + 1] if cut + 1 < len(src.path) else None) or isinstance(v, dict | list | bool) or v is None:
            continue
        if sum(1 for r in siblings if isinstance(r, dict) and r.get(f) == v) == 1:
            return f"the one whose {f.replace('_', ' ')} is {_value_text(v)}"
    n = src.path[cut]
    return f"the {ORDINALS[n]} one listed" if n < len(ORDINALS) else f"number {n + 1} in the list"


def describe_call(call: dict, step: Step, schema: dict, said: set[str], results: list[Any], turn_start: int,
                  leave_out: str | None = None) -> str:
    """One request in words: what the tool does and every value the user must give.

    A value that comes from an earlier result is left for the agent to look up; the request
    still names it when the user already said it, points at the entry when it is picked
    from a listing, and says "the same as before" when it comes from an earlier turn.
    """
    parts = []
    for arg, v in call["arguments"].items():
        text, src, label = _value_text(v), step.sources[arg], arg.replace("_", " ")
        if arg == leave_out:
            continue
        if src.kind == "list":
            parts.append(f"{label} from the results above")
            continue
        # a name read from a listing is something a person says (an id is not)
        named = isinstance(v, str) and _pick_phrase(src, results) is not None and not _id_field(src.path)
        if src.kind != "flow" or text in said or named:
            parts.append(f"{label} {text}")
            said.add(text)
            continue
        pick = _pick_phrase(src, results)
        if pick == "":
            parts.append(f"{label} {text}")
            said.add(text)
        elif pick:
            parts.append(f"{label} of {pick}")
        elif src.call < turn_start:
            parts.append(f"the same {label} as before")
    text = _phrase(schema)
    return f"{text} with {', '.join(parts)}" if parts else text


OPENERS = ("Please {}.", "Could you {}?", "I need you to {}.", "{}, please.")
JOINERS = (", then ", "; after that, ", ", and then ")


def write_turn(calls: list[dict], steps: list[Step], index: dict, rng: random.Random, said: set[str],
               results: list[Any], leave_out: tuple[int, str] | None = None) -> str:
    start = min((s.index for s in steps), default=0)
    parts = [describe_call(c, s, index[c["name"]], said, results, start, leave_out[1] if leave_out and leave_out[0] == k else None)
             for k, (c, s) in enumerate(zip(calls, steps, strict=True))]
    body = rng.choice(JOINERS).join(parts)
    text = rng.choice(OPENERS).format(body)
    return text[0].upper() + text[1:]


def _missing_value(calls: list[dict], steps: list[Step], index: dict, rng: random.Random) -> tuple[int, str] | None:
    """A required, user-given argument of the turn's calls that the request can leave out."""
    options = []
    for k, (c, s) in enumerate(zip(calls, steps, strict=True)):
        params = index[c["name"]].get("function", {}).get("parameters") or {}
        for arg in params.get("required") or []:
            if arg in c["arguments"] and s.sources[arg].kind in ("state", "literal"):
                options.append((k, arg))
    return rng.choice(options) if options else None


def write_turns(plan: Plan, run: Execution, rng: random.Random) -> list[str]:
    """The user turns of a candidate, with the seed's skill augmentation in the wording."""
    seed = plan.seed
    by_turn: dict[int, list[Step]] = defaultdict(list)
    reference, index, results = run.reference, run.tools, run.parsed
    for s in run.steps:
        by_turn[s.turn].append(s)
    released = {w["turn"] for w in seed.get("withheld") or []}
    texts: list[str] = []
    said: set[str] = set()
    t = 0
    while t < plan.n_turns:
        calls = reference[t]
        nxt = t + 1
        if not calls and nxt < plan.n_turns and reference[nxt]:
            # an empty turn followed by the calls it asked for: miss_func or miss_param
            later, steps = reference[nxt], by_turn[nxt]
            if seed["skill"] == "miss_param" and nxt not in released:
                gap = _missing_value(later, steps, index, rng)
                if gap is not None:
                    k, arg = gap
                    texts.append(write_turn(later, steps, index, rng, said, results, leave_out=gap))
                    value = _value_text(later[k]["arguments"][arg])
                    said.add(value)
                    texts.append(f"Sorry, the {arg.replace('_', ' ')} is {value}.")
                    t += 2
                    continue
            texts.append(write_turn(later, steps, index, rng, said, results))
            texts.append(seed["user_turns"][nxt] if nxt in released else "Please go ahead with my last request.")
            t += 2
            continue
        if not calls:
            texts.append(seed["user_turns"][t])  # an empty turn that asks nothing we can rephrase
        else:
            texts.append(write_turn(calls, by_turn[t], index, rng, said, results))
        t += 1
    return texts


# ------------------------------------------------------------------------------- the llm writer

REWRITE_PROMPT = ("Rewrite the user's request below the way a person would say it to an assistant. "
                  "Keep every quoted value exactly as written, add no value of your own, and answer "
                  "with the rewritten request only.")


def critique(rewrite: str, template: str, values: set[str]) -> bool:
    """Whether a rewrite may replace the template turn: it is a plain request of sensible
    length, names every value the template names, and no value the template kept back (a
    value the agent must look up or ask for)."""
    text = rewrite.strip()
    if not text or len(text) > 3 * len(template) + 80 or "<tool_call>" in text:
        return False
    # prose, not token soup: most whitespace-separated pieces are words, numbers or quoted values
    pieces = text.split()
    if sum(1 for p in pieces if re.fullmatch(r"[(\"']?[A-Za-z][a-z]*[)\"'.,;:!?]*|[$]?[\d.,:-]+|'[^']*'?", p)) < 0.7 * len(pieces):
        return False
    # still about the same things: most of the template's content words are there
    words = set(re.findall(r"[a-z]{4,}", template.lower()))
    if words and len(words & set(re.findall(r"[a-z]{4,}", text.lower()))) < 0.4 * len(words):
        return False
    for v in values:
        bare = v.strip("'")
        if len(bare) < 3:
            continue
        if (bare in template) != (bare in text):
            return False
    return True


class LLMWriter:
    """Rewrites the template's user turns with a rollout backend, turn by turn, in batches."""

    def __init__(self, policy: str, backend: str = "hf", seed: int = 0, max_new_tokens: int = 96):
        from rodscli.policy.chat import ChatFormat
        from rodscli.stages.rollout import RolloutOptions, load_backend

        self.backend = load_backend(policy, RolloutOptions(backend=backend, temperature=0.7))
        self.chat = ChatFormat(self.backend.tokenizer)
        self.seed, self.max_new_tokens = seed, max_new_tokens

    def rewrite(self, tasks: list[dict], batch: int = 32) -> int:
        """Rewrite the user turns of `tasks` in place; the number of turns rewritten."""
        from rodscli.policy.base import Request

        jobs = [(t, k) for t in tasks for k in range(len(t["user_turns"]))]
        kept = 0
        for start in range(0, len(jobs), batch):
            chunk = jobs[start:start + batch]
            requests = []
            for n, (t, k) in enumerate(chunk):
                prompt = self.chat.render([{"role": "system", "content": REWRITE_PROMPT},
                                           {"role": "user", "content": t["user_turns"][k]}])
                requests.append(Request(self.chat.encode(prompt), self.max_new_tokens, self.seed + start + n))
            for (t, k), gen in zip(chunk, self.backend.generate(requests, self.chat.stop_ids), strict=True):
                ids = [i for i in gen.token_ids if i not in self.chat.stop_ids]
                text = self.chat.decode(ids).strip()
                values = {_value_text(v) for turn in t["reference"] for c in turn for v in c["arguments"].values()}
                ok = gen.stopped and critique(text, t["user_turns"][k], values)
                t["synthesis"].setdefault("rewritten", []).append(ok)
                if ok:
                    t["user_turns"][k] = text
                    kept += 1
        return kept

    def close(self) -> None:
        self.backend.close()


# ------------------------------------------------------------------------------- near-duplicates


def call_keys(task: dict) -> frozenset[str]:
    """The call sequence as a set of canonical calls (name and arguments)."""
    return frozenset(
        c["name"] + orjson.dumps(c["arguments"], option=orjson.OPT_SORT_KEYS).decode()
        for turn in task["reference"] for c in turn
    )


class DuplicateIndex:
    """Jaccard similarity of call sets against every indexed task, through an inverted index."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.by_key: dict[str, list[int]] = defaultdict(list)

    def add(self, keys: frozenset[str]) -> None:
        i = len(self.sizes)
        self.sizes.append(len(keys))
        for k in keys:
            self.by_key[k].append(i)

    def max_jaccard(self, keys: frozenset[str]) -> float:
        shared = Counter(chain.from_iterable(self.by_key.get(k, ()) for k in keys))  # counted in C
        best = 0.0
        for i, c in shared.items():
            best = max(best, c / (len(keys) + self.sizes[i] - c))
        return best


# ------------------------------------------------------------------------------- the stage


def _final_hash(ep: Episode, states: ClassStates) -> str:
    return state_hash(live_state(ep, None, states))


def _replays(task: dict, results: list[str], final: FinalState | None, known: CallTrace | None = None,
             views: dict | None = None, plan: Plan | None = None) -> tuple[bool, CallTrace]:
    """The reference on a fresh episode: no error, the same results, the same final state
    (when `final` is given; `views` as in `execute`; `plan` keeps the tools offered per
    turn). With `known` (the generation's own
    trace) the replay only runs the calls; else it also fingerprints the state around each
    call for Phi."""
    ep = open_episode(task)
    try:
        if known is None:
            trace = trace_calls(task, ep)
        else:
            trace = CallTrace()
            for turn, calls in enumerate(task["reference"]):
                offered = plan.offered_at(task, ep, turn) if plan is not None else \
                    {tool_name(t) for t in offered_tools(task, ep, turn)}
                outs = [ep.call(c["name"], c["arguments"], offered) for c in calls]
                trace.results.append([o.result or "" for o in outs])
                trace.errors.append([o.error for o in outs])
            trace.mutated, trace.owners = known.mutated, known.owners
        try:
            same_state = final is None or final.same(ep, views)
        except (RecursionError, StepFailed):
            same_state = False
    finally:
        ep.close()
    flat = [r for turn in trace.results for r in turn]
    return trace.ok and flat == results and same_state, trace


@dataclass
class Synthesizer:
    """Makes verified variants of seed tasks; keeps the API graph, the plans and the counts."""

    opts: SynthesizeOptions
    known: list[dict] = field(default_factory=list)  # buffer and batch tasks (near-duplicates, worlds, literals)
    graph: ApiGraph = field(init=False)
    dups: DuplicateIndex = field(init=False)
    rejected: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # execution_failed attempts by the last restart's cause
    attempted: int = 0

    def __post_init__(self) -> None:
        if self.opts.writer not in WRITERS:
            raise OptionError(f"unknown writer {self.opts.writer!r} (known: {', '.join(WRITERS)})", field="--writer")
        if not 0 <= self.opts.tolerance <= 1 or not 0 < self.opts.max_jaccard <= 1:
            raise OptionError("need 0 <= --tolerance <= 1 and 0 < --max-jaccard <= 1", field="--tolerance")
        if self.opts.per_seed < 0 or self.opts.attempts < 1 or self.opts.repairs < 0:
            raise OptionError("need --per-seed >= 0, --attempts >= 1, --repairs >= 0", field="--per-seed")
        if self.opts.writer == "llm" and not self.opts.policy:
            raise OptionError("the llm writer needs --policy (a checkpoint to rewrite the user turns with)", field="--policy")
        self.graph = ApiGraph.mine(self.known)
        self.worlds = _world_pool(self.known)
        self.dups = DuplicateIndex()
        self.views: dict = {}  # class states met, converted to JSON data (see ClassStates.view)
        self.outcomes: dict = {}  # (call, class state) -> the call's outcome and the state it left (see execute)
        for t in self.known:
            self.dups.add(call_keys(t))

    def variants(self, seed: dict) -> list[dict]:
        """Up to `per_seed` accepted variants of `seed` (each given `attempts` tries)."""
        if self.opts.per_seed == 0:
            return []
        plan = make_plan(seed)
        self.graph.add_plan(plan)
        out = []
        for k in range(self.opts.per_seed):
            for attempt in range(self.opts.attempts):
                self.attempted += 1
                cand, reason = self._attempt(plan, k, attempt)
                if cand is not None:
                    out.append(cand)
                    break
                self.rejected[reason] += 1
        return out

    def _attempt(self, plan: Plan, k: int, attempt: int) -> tuple[dict | None, str]:
        seed, opts = plan.seed, self.opts
        rng = random.Random(f"rods-synth:{opts.seed}:{opts.iteration}:{seed['id']}:{k}:{attempt}")
        world, world_from = new_world(seed, rng, self.worlds, attempt, opts.seed)
        cand = {key: seed[key] for key in ("env", "domain", "skill", "env_config", "tools", "withheld", "system_prompt")
                if key in seed}
        cand["initial_state"] = world
        # a call that fails although re-grounded usually needs another choice upstream (a
        # customer who has a shipped order): start over in the same world a few times, the
        # last time with the seed's literal values (values that only work together, like
        # the zip codes of a known route, may come from different calls)
        if len(self.outcomes) >= OUTCOMES:
            self.outcomes.clear()
        for restart in range(RESTARTS):  # noqa: B007 - recorded below
            try:
                run = execute(plan, cand, self.graph, rng, opts.repairs, keep_literals=restart == RESTARTS - 1,
                              swap=opts.swap if restart < RESTARTS - 1 else 0.0, outcomes=self.outcomes, views=self.views)
                break
            except StepFailed as exc:
                failure = exc
                continue
        else:
            self.failures[failure.cause()] += 1
            return None, "execution_failed"
        cand["reference"] = run.reference
        if not any(run.reference):
            return None, "trivial"
        # the cheap filters first (a candidate must pass them all): the call sequence, then
        # Phi from the generation's own trace when it is exactly what a replay runs
        keys = call_keys(cand)
        similarity = self.dups.max_jaccard(keys)
        if similarity >= opts.max_jaccard:
            return None, "near_duplicate"
        def phi(trace: CallTrace) -> tuple[dict, float, bool]:  # Phi(candidate), its distance to the seed's, a match?
            profile = compute_profile(cand, trace)
            distance = profile_distance(profile, plan.profile)
            return profile, distance, not profile["ref_errors"] and distance <= opts.tolerance

        known = run.call_trace()
        if known is not None:
            profile, distance, match = phi(known)
            if not match:
                return None, "profile_mismatch"
        # a failed call that changed state in the generating episode (a repair) leaves state
        # no replay sees: then the results must agree, the final state is the replay's
        ok, trace = _replays(cand, run.results, run.final if not run.dirty else None, known, self.views, plan)
        if not ok:
            return None, "replay_failed"
        if known is None:
            profile, distance, match = phi(trace)
            if not match:
                return None, "profile_mismatch"
        user_turns = write_turns(plan, run, rng)
        self.dups.add(keys)
        task = {
            "id": f"{seed['id']}~i{opts.iteration}v{k}",
            **cand,
            "origin": "synthetic",
            "parent_id": seed["id"],
            "generation": int(seed.get("generation") or 0) + 1,
            "created_iter": opts.iteration,
            "user_turns": user_turns,
            "profile": profile,
            "synthesis": {
                "seed_id": seed["id"],
                "writer": opts.writer,
                "world": world_from,
                "attempt": attempt,
                "restarts": restart,
                "repairs": run.repairs,
                "plan": [[c["name"] for c in turn] for turn in run.reference],
                "sources": run.kinds,
                "profile_distance": round(distance, 4),
                "max_jaccard": round(similarity, 4),
                "checks": ["executed", "replay", f"profile<={opts.tolerance}", f"jaccard<{opts.max_jaccard}", "nontrivial"],
            },
            "meta": {"synthesizer": "rods-synthesize/1", "seed": opts.seed},
        }
        return task, "accepted"

    def stats(self, accepted: int, requested: int) -> dict:
        feeds = sorted(self.graph.feeds.items(), key=lambda kv: (-kv[1], kv[0]))
        return {"requested": requested, "attempted": self.attempted, "accepted": accepted,
                "rejected": {r: self.rejected.get(r, 0) for r in REASONS},
                # why executions failed (tool: the simulator's message), most frequent first
                "execution_failures": dict(sorted(self.failures.items(), key=lambda kv: (-kv[1], kv[0]))[:10]),
                # the mined API graph: tools with observed calls, and the flow edges the
                # seeds' plans used (producer -> consumer.argument), most used first
                "api_graph": {"tools": len(self.graph.calls),
                              "observed_calls": sum(len(v) for v in self.graph.calls.values()),
                              "flow_edges": len(feeds),
                              "top_flows": {f"{p} -> {c}.{a}": n for (p, c, a), n in feeds[:10]}}}


@contextlib.contextmanager
def _long_lived_frozen() -> Iterator[None]:
    """The objects alive before synthesis (the tasks, the buffer, the mined graph: many, and
    long-lived) are left out of the cyclic collector while it runs, so that its passes walk
    only what synthesis allocates (episodes hold cycles: they are still collected)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def synthesize(seeds: list[dict], known: list[dict], opts: SynthesizeOptions,
               progress: Callable[[list, str], Iterable] | None = None) -> tuple[list[dict], dict]:
    """Variants of every seed, and the counts (requested, attempted, accepted, rejected by reason)."""
    synth = Synthesizer(opts, known)
    out: list[dict] = []
    with _long_lived_frozen():
        for seed in (progress(seeds, "synthesize") if progress and opts.per_seed else seeds):
            out.extend(synth.variants(seed))
    stats = synth.stats(len(out), len(seeds) * opts.per_seed)
    if opts.writer == "llm" and out:
        writer = LLMWriter(opts.policy, opts.backend, opts.seed)  # type: ignore[arg-type]
        try:
            stats["rewritten_turns"] = writer.rewrite(out)
        finally:
            writer.close()
        stats["turns"] = sum(len(t["user_turns"]) for t in out)
    return out, stats


def selected_seeds(groups: list[dict], tasks_by_id: dict[str, dict], where: str) -> list[dict]:
    """The tasks of the selected groups, in rank order (the highest phi first)."""
    chosen = sorted((g for g in groups if g.get("selected")), key=lambda g: (g.get("rank") is None, g.get("rank") or 0, g["task_id"]))
    seeds, seen = [], set()
    for g in chosen:
        task = tasks_by_id.get(g["task_id"])
        if task is None:
            raise InputError(f"selected task {g['task_id']!r} is in neither --tasks nor --buffer", where=where, field="task_id")
        if g["task_id"] not in seen:
            seen.add(g["task_id"])
            seeds.append(task)
    return seeds

