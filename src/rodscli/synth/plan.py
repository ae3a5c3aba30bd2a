"""A seed task read as a plan: its reference calls, each argument bound to where its value
comes from (`Source`).

- `flow`: the value comes from the result of an earlier call (the JSON path inside it; a
  list argument may take each element from an earlier result, like numbers to average);
- `state`: the value names something in the live state (a path whose collection levels
  are wildcards, e.g. customers.*.name; arguments of one call that point into the same
  entity are bound jointly, see `link`; a key must name the same kind of entity, see
  `shape`);
- `literal`: anything else (a new address, a quantity), drawn later from the API graph;
- `keep`: enum arguments, booleans and nulls keep the seed's value (the plan's meaning
  hangs on them: list the *shipped* orders).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rodscli.envs.base import Episode, offered_tools, open_episode, tool_name
from rodscli.profile import compute_profile, nontrivial, trace_calls
from rodscli.synth.paths import FirstPaths, follow, index_paths, parse_json
from rodscli.synth.states import OwnerStates, live_state


@dataclass
class Source:
    """Where a plan step's argument value comes from (see the module doc)."""

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


def enum_args(schema: dict) -> set[str]:
    props = (schema.get("function", schema).get("parameters") or {}).get("properties") or {}
    return {k for k, p in props.items() if "enum" in p}


def make_plan(seed: dict) -> Plan:
    """Read the seed's reference as a plan: execute it step by step and bind every argument."""
    ep = open_episode(seed)
    states = OwnerStates(ep)
    changes: list[bool | None] = []  # each call: whether it changed its owner's state (None: unknown)
    try:
        index = ep.tool_index()
        steps: list[Step] = []
        parsed: list[Any] = []
        found = FirstPaths(parsed)
        for turn, calls in enumerate(seed["reference"]):
            offered = {tool_name(t) for t in offered_tools(seed, ep, turn)}
            for c in calls:
                sources = bind_call(c["arguments"], enum_args(index.get(c["name"], {})), found, ep, states)
                steps.append(Step(turn, c["name"], c["arguments"], sources, len(steps)))
                saved = states.before(c["name"])
                out = ep.call(c["name"], c["arguments"], offered)
                changes.append(None if saved is None else changed(states, *saved))
                parsed.append(parse_json(out.result or "") if out.ok else None)
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


def changed(states: OwnerStates, owner: str, before: bytes) -> bool | None:
    """Whether the call just made changed its owner's state (None: it became unsavable)."""
    after = states.after(owner)
    return None if after is None else after != before


def bind_call(arguments: dict, enums: set[str], found: FirstPaths, ep: Episode, states: OwnerStates) -> dict[str, Source]:
    """Every argument of one call bound to its source, before the call runs."""
    wanted = {v for v in arguments.values() if isinstance(v, str) and nontrivial(v)}
    live = live_state(ep, None, states) if wanted else None  # state sources are such strings
    in_state = index_paths(live, wanted) if wanted else {}
    sources = {arg: bind(arg, value, enums, found, in_state) for arg, value in arguments.items()}
    link(sources)
    for src in sources.values():
        if src.kind == "state" and src.is_key:
            src.shape = shape(follow(live, src.path))
    return sources


def flow_source(value: Any, parsed: FirstPaths, any_value: bool = False) -> Source | None:
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
                if hit and (any_value or nontrivial(value) or id_field(hit[0])):
                    path, mask, is_key = hit
                    return Source("flow", call=i, path=path, mask=mask, is_key=is_key,
                                  cast=type(value).__name__ if loose else None)
    return None


def bind(arg: str, value: Any, enums: set[str], parsed: FirstPaths, in_state: dict[str, list]) -> Source:
    """Where one argument's value comes from: kept, a flow from an earlier result, a place
    in the live state (`in_state`: the value's hits, see `index_paths`), else a literal."""
    if arg in enums or isinstance(value, bool) or value is None:
        return Source("keep")
    if isinstance(value, list) and value:
        parts = [flow_source(v, parsed) for v in value]
        if any(parts):
            parts = [p or flow_source(v, parsed, any_value=True) or Source("keep") for p, v in zip(parts, value, strict=True)]
            return Source("list", parts=parts)
    flow = flow_source(value, parsed)
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


def id_field(path: tuple) -> bool:
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


def link(sources: dict[str, Source]) -> None:
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


def leaf_steps(plan: Plan) -> set[int]:
    """Steps another tool may stand in for: no argument flows in, no result flows out, not withheld."""
    feeds = {src.call for step in plan.steps for src in step.sources.values() if src.kind == "flow"}
    withheld = {w["tool"] for w in plan.seed.get("withheld") or []}
    return {s.index for s in plan.steps
            if s.index not in feeds and s.name not in withheld
            and all(src.kind in ("literal", "keep") for src in s.sources.values())}
