"""The complexity profile Phi of a task (docs/architecture.md section 3), computed from its reference.

Phi is what synthesis keeps fixed while it changes entities, state and wording, so it is
computed from the executed reference, never written by hand. Fields of `compute_profile`:

- `n_calls`, `n_turns`, `calls_per_turn` (list, one count per user turn), `empty_turns`
  (turns whose reference is empty: ask for a missing value or say a function is missing)
- `skill` (the task's skill type), `n_withheld` (tools withheld until a later turn)
- `tools` (tool names in call order), `tool_set` (sorted, unique)
- `edges`: the API topology, a DAG over the reference calls numbered in call order across
  turns, as `[i, j, kind]`:
  * `flow` (parameter flow): a non-trivial argument value of call j appears in the result
    of an earlier call i (its JSON leaves or keys; substring for plain-text results); the
    edge comes from the latest such i.
  * `state` (state dependency): call i changed the state of the class (state
    owner; private attributes count, e.g. a current directory) that call j runs on, and either i is the latest such change before j (j runs on
    the state i left) or j shares a non-trivial argument value with i (j reads or changes
    the entity i touched). A pair that is already a flow edge stays a flow edge.
- `n_flow_edges`, `n_state_edges`, `depth` (calls on the longest path; 1 when no edges,
  0 when no calls), `cross_turn_refs` (edges whose two calls are in different turns)
- `topology`: a canonical signature of the DAG's shape with names abstracted away
  (Weisfeiler-Lehman refinement over in/out edges and their kinds, hashed), equal for
  isomorphic topologies; `topology_labels`: the sorted node labels it hashes, used for
  a graded distance between shapes.
- `ref_errors`: reference calls that came back with an error (a valid task has 0).

Non-trivial value: a string of at least 3 characters, or a number that is not an integer
in [-9, 9] (small counts and flags match results by accident). Booleans and null never
count.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from dataclasses import dataclass, field
from typing import Any

import orjson

from rodscli.envs.base import (
    Episode,
    ReferenceTrace,
    offered_tools,
    open_episode,
    state_hash,
    tool_name,
)

PROFILE_VERSION = 1
WL_ROUNDS = 3


@dataclass
class CallTrace:
    """A reference executed call by call: what each call returned and whether it changed state."""

    results: list[list[str]] = field(default_factory=list)  # per turn, per call
    errors: list[list[str | None]] = field(default_factory=list)
    mutated: list[list[bool]] = field(default_factory=list)  # the call changed its owner's state
    owners: list[list[str]] = field(default_factory=list)  # the class whose state the call runs on

    @property
    def ok(self) -> bool:
        return all(e is None for turn in self.errors for e in turn)


def call_owner(episode: Episode, name: str) -> str:
    """The state owner of a tool: its class in a Python-class episode, else "" (the whole episode)."""
    return episode.tool_owner(name)


def owner_hash(episode: Episode, owner: str) -> str:
    """A fingerprint of the owner's whole state, private attributes included.

    Private state counts here (BFCL's current directory is `_current_dir`): a call that
    moves it sets up the state the next call needs. Pickle handles the simulators'
    parent links (cycles) and is fast; anything unpicklable falls back to the snapshot.
    """
    digest = getattr(episode, "owner_digest", None)  # copy-on-write state: pickling it would copy it all
    if owner and digest is not None and (value := digest(owner)) is not None:
        return value
    instances = getattr(episode, "instances", None)
    if owner and instances is not None and owner in instances:
        try:
            blob = pickle.dumps(vars(instances[owner]), protocol=pickle.HIGHEST_PROTOCOL)
            return hashlib.blake2b(blob, digest_size=16).hexdigest()
        except Exception:  # an unpicklable attribute (a lock, a handle): compare public state
            pass
    return state_hash(episode.snapshot())


def trace_calls(task: dict, episode: Episode | None = None) -> CallTrace:
    """Execute the task's reference call by call on a fresh episode (or the one given)."""
    trace = CallTrace()
    own = episode is None
    ep = open_episode(task) if own else episode
    try:
        hashes: dict[str, str] = {}
        for turn, calls in enumerate(task["reference"]):
            offered = {tool_name(t) for t in offered_tools(task, ep, turn)}
            res, err, mut, own_ = [], [], [], []
            for c in calls:
                owner = call_owner(ep, c["name"])
                before = hashes.get(owner) or owner_hash(ep, owner)
                out = ep.call(c["name"], c["arguments"], offered)
                after = owner_hash(ep, owner)
                hashes[owner] = after
                res.append(out.result or "")
                err.append(out.error)
                mut.append(before != after)
                own_.append(owner)
            trace.results.append(res)
            trace.errors.append(err)
            trace.mutated.append(mut)
            trace.owners.append(own_)
    finally:
        if own:
            ep.close()
    return trace


def nontrivial(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, str):
        return len(value.strip()) >= 3
    if isinstance(value, int):
        return not -9 <= value <= 9
    if isinstance(value, float):
        return not (value.is_integer() and -9 <= value <= 9)
    return False


def leaves(value: Any, out: set | None = None) -> set:
    """Non-trivial scalar values (and dict keys) inside a JSON value, as comparable keys."""
    out = set() if out is None else out
    if isinstance(value, dict):
        for k, v in value.items():
            if nontrivial(k):
                out.add(value_key(k))
            leaves(v, out)
    elif isinstance(value, list | tuple):
        for v in value:
            leaves(v, out)
    elif nontrivial(value):
        out.add(value_key(value))
    return out


def value_key(value: Any) -> str:
    # 3 and 3.0 and "3" are the same value once shown as text to the model
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


@functools.lru_cache(maxsize=8192)
def _json_leaves(text: str) -> frozenset | None:
    """`leaves` of a JSON result text (None: not JSON); the same results recur across
    the tasks and candidates of one world, so they are read once."""
    try:
        return frozenset(leaves(orjson.loads(text)))
    except orjson.JSONDecodeError:
        return None


class _ResultIndex:
    """The values a result holds: JSON leaves, or the raw text for substring checks."""

    __slots__ = ("text", "values")

    def __init__(self, text: str, error: str | None):
        self.text = "" if error else text
        self.values: frozenset | None = _json_leaves(self.text) if self.text[:1] in ("{", "[") else None

    def holds(self, key: str) -> bool:
        if not self.text:
            return False
        if self.values is not None:
            return key in self.values
        return key in self.text


def topology_signature(n: int, edges: list[tuple[int, int, str]]) -> tuple[str, list[str]]:
    """Weisfeiler-Lehman hash of the DAG (names abstracted): equal for isomorphic shapes."""
    whole, labels = _topology_signature(n, tuple(tuple(e) for e in edges))
    return whole, list(labels)


@functools.lru_cache(maxsize=4096)
def _topology_signature(n: int, edges: tuple[tuple[int, int, str], ...]) -> tuple[str, tuple[str, ...]]:
    # the same shapes recur (every variant of a seed has its shape): hashed once each
    ins: list[list[tuple[str, int]]] = [[] for _ in range(n)]
    outs: list[list[tuple[str, int]]] = [[] for _ in range(n)]
    for i, j, kind in edges:
        outs[i].append((kind, j))
        ins[j].append((kind, i))
    labels = ["n"] * n
    for _ in range(WL_ROUNDS):
        new = []
        for v in range(n):
            sig = (labels[v], sorted((k, labels[u]) for k, u in ins[v]), sorted((k, labels[w]) for k, w in outs[v]))
            new.append(hashlib.blake2b(repr(sig).encode(), digest_size=4).hexdigest())
        labels = new
    ordered = sorted(labels)
    whole = hashlib.blake2b(("|".join(ordered) + f"#{n}").encode(), digest_size=8).hexdigest()
    return whole, tuple(ordered)


def longest_path(n: int, edges: list[tuple[int, int, str]]) -> int:
    """Calls on the longest dependency chain; edges go forward in call order."""
    best = [1] * n
    for i, j, _ in sorted(edges, key=lambda e: e[1]):
        best[j] = max(best[j], best[i] + 1)
    return max(best, default=0)


def dependency_edges(task: dict, trace: CallTrace) -> list[tuple[int, int, str]]:
    """The API topology: flow and state edges between the reference calls (see module doc)."""
    calls = [c for turn in task["reference"] for c in turn]
    results = [r for turn in trace.results for r in turn]
    errors = [e for turn in trace.errors for e in turn]
    mutated = [m for turn in trace.mutated for m in turn]
    owners = [o for turn in trace.owners for o in turn]
    indexes = [_ResultIndex(r, e) for r, e in zip(results, errors, strict=True)]
    # argument values only: parameter names ('name', 'product_id') also appear as keys in
    # results, and would link any two calls that share a parameter name
    arg_keys = [set().union(*(leaves(v) for v in c["arguments"].values())) for c in calls]
    edges: dict[tuple[int, int], str] = {}
    last_mutation: dict[str, int] = {}
    for j in range(len(calls)):
        for key in sorted(arg_keys[j]):
            for i in range(j - 1, -1, -1):
                if indexes[i].holds(key):
                    edges[(i, j)] = "flow"
                    break
        owner = owners[j]
        if owner in last_mutation:
            edges.setdefault((last_mutation[owner], j), "state")
        for i in range(j):
            if mutated[i] and owners[i] == owner and arg_keys[i] & arg_keys[j]:
                edges.setdefault((i, j), "state")
        if mutated[j]:
            last_mutation[owner] = j
    return sorted((i, j, k) for (i, j), k in edges.items())


def compute_profile(task: dict, trace: CallTrace | ReferenceTrace | None = None) -> dict:
    """Phi of `task` (JSON data for task["profile"]), executing the reference when needed.

    A `CallTrace` (from `trace_calls`) is used as is. A `ReferenceTrace` holds only
    per-turn states, too coarse to tell which call changed the state, so the reference is
    executed call by call again in that case (and when `trace` is None).
    """
    if not isinstance(trace, CallTrace):
        trace = trace_calls(task)
    ref = task["reference"]
    n = sum(len(t) for t in ref)
    edges = dependency_edges(task, trace)
    turn_of = [t for t, calls in enumerate(ref) for _ in calls]
    signature, labels = topology_signature(n, edges)
    tools = [c["name"] for turn in ref for c in turn]
    return {
        "version": PROFILE_VERSION,
        "skill": task.get("skill"),
        "n_turns": len(ref),
        "n_calls": n,
        "calls_per_turn": [len(t) for t in ref],
        "empty_turns": sum(1 for t in ref if not t),
        "n_withheld": len(task.get("withheld") or []),
        "tools": tools,
        "tool_set": sorted(set(tools)),
        "edges": [[i, j, k] for i, j, k in edges],
        "n_flow_edges": sum(1 for e in edges if e[2] == "flow"),
        "n_state_edges": sum(1 for e in edges if e[2] == "state"),
        "depth": longest_path(n, edges),
        "cross_turn_refs": sum(1 for i, j, _ in edges if turn_of[i] != turn_of[j]),
        "topology": signature,
        "topology_labels": labels,
        "ref_errors": sum(1 for turn in trace.errors for e in turn if e is not None),
    }


def _rel(a: float, b: float) -> float:
    """Relative difference in [0, 1]: 0 when equal."""
    top = max(abs(a), abs(b))
    return 0.0 if top == 0 else abs(a - b) / top


def _multiset_jaccard(a: list[str], b: list[str]) -> float:
    from collections import Counter

    ca, cb = Counter(a), Counter(b)
    union = sum((ca | cb).values())
    return 1.0 if union == 0 else sum((ca & cb).values()) / union


def profile_distance(p: dict, q: dict) -> float:
    """Distance between two profiles in [0, 1]; 0 means the same profile.

    The mean of eight terms, each in [0, 1]: skill (0/1), number of turns, calls per turn
    (L1 over turns / the larger total), depth, flow edges, state edges, cross-turn
    references (relative differences), and topology (0 for the same signature, else one
    minus the multiset Jaccard of the WL node labels). Tool names do not count: a variant
    may reach the same shape through other tools.
    """
    cp, cq = list(p["calls_per_turn"]), list(q["calls_per_turn"])
    width = max(len(cp), len(cq))
    cp += [0] * (width - len(cp))
    cq += [0] * (width - len(cq))
    total = max(sum(cp), sum(cq))
    per_turn = 0.0 if total == 0 else sum(abs(a - b) for a, b in zip(cp, cq, strict=True)) / total
    per_turn = min(1.0, per_turn)
    topo = 0.0 if p["topology"] == q["topology"] else 1.0 - _multiset_jaccard(p["topology_labels"], q["topology_labels"])
    terms = [
        0.0 if p.get("skill") == q.get("skill") else 1.0,
        _rel(p["n_turns"], q["n_turns"]),
        per_turn,
        _rel(p["depth"], q["depth"]),
        _rel(p["n_flow_edges"], q["n_flow_edges"]),
        _rel(p["n_state_edges"], q["n_state_edges"]),
        _rel(p["cross_turn_refs"], q["cross_turn_refs"]),
        topo,
    ]
    return sum(terms) / len(terms)
