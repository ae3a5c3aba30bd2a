"""Execution: a plan grounded and run, call by call, on a fresh episode of a variant task.

Repair is bounded: a call that fails, or that changes state where the seed's did not (or
the other way round: Phi's state edges hang on it; the change is undone), is re-grounded
up to `repairs` times; then the execution fails (`StepFailed`). A leaf step (nothing flows
in or out) may be done by another tool of its owner with the arguments of one of its
observed calls (`swap`): Phi does not count tool names.

Speed: each owner's state is tracked as bytes (`OwnerStates`: one save per call tells
whether it changed state and undoes it), and a call met again on the same owner state (a
repair, a restart, another attempt in the same world) restores the state it left instead
of running (`outcomes`, kept by the caller across executions): the simulators are
deterministic in their owner's state, random generators included.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from rodscli.envs.base import CallOutcome, Episode, open_episode
from rodscli.profile import CallTrace
from rodscli.synth.failures import CyclicState, StepFailed
from rodscli.synth.graph import ApiGraph
from rodscli.synth.ground import Grounder
from rodscli.synth.paths import parse_json
from rodscli.synth.plan import Plan, Source, Step, leaf_steps
from rodscli.synth.states import FinalState, OwnerStates, final_hash, live_state

MISMATCH = "the call changed state where the seed's did not, or the other way round"


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
    mutated: list[bool | None]  # each call: whether it changed its owner's state (None: unknown)
    owners: list[str]  # each call: the owner it ran on
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


def substitute(step: Step, ep: Episode, offered: set[str], graph: ApiGraph, avoid: set[str],
               rng: random.Random) -> Step | None:
    """Plan over the API graph: another tool of the same owner, with the arguments of one of
    its observed calls, in place of a leaf step (Phi does not count tool names; the profile
    filter checks that the shape held)."""
    owner = ep.tool_owner(step.name)
    options = sorted(t for t in offered if t != step.name and t not in avoid and graph.calls.get(t)
                     and ep.tool_owner(t) == owner)
    if not options:
        return None
    name = rng.choice(options)
    args = dict(rng.choice(graph.calls[name]))
    return Step(step.turn, name, args, {a: Source("literal") for a in args}, step.index)


def call_key(name: str, args: dict) -> bytes | None:
    try:
        return name.encode() + orjson.dumps(args, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return None


@dataclass
class Called:
    """One call on the episode: its outcome, its owner's state before and after (None:
    no owner, or unsavable), its result parsed, and whether it was remembered (not run)."""

    out: CallOutcome
    saved: tuple[str, bytes] | None
    after: bytes | None
    parsed: Any
    known: bool

    @property
    def ok(self) -> bool:
        # BFCL's simulators report refusals as {"error": ...} results: a failed call too
        return self.out.ok and not (isinstance(self.parsed, dict) and "error" in self.parsed)

    @property
    def changed(self) -> bool:
        return self.after is None or self.saved is None or self.after != self.saved[1]

    def redo(self, states: OwnerStates) -> None:
        """A remembered call that changed state: its owner is put in the state it left."""
        if self.known and self.changed and self.saved is not None and self.after is not None:
            states.restore(self.saved[0], self.after)

    def undo(self, states: OwnerStates) -> None:
        """A call that ran: its owner is put back in the state before it."""
        if not self.known and self.saved is not None:
            states.restore(*self.saved)


@dataclass
class Executor:
    """Grounds and runs one plan on one fresh episode of `task` (see `execute`)."""

    plan: Plan
    task: dict
    graph: ApiGraph
    rng: random.Random
    repairs: int
    keep_literals: bool = False
    outcomes: dict = field(default_factory=dict)  # (call, owner state, offered) -> (outcome, state after, parsed)
    views: dict | None = None
    n_repairs: int = 0
    dirty: bool = False
    reference: list[list[dict]] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    done: list[Step] = field(default_factory=list)
    mutated: list[bool | None] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)

    def run(self, swap: float) -> Execution:
        plan, rng = self.plan, self.rng
        self.grounder = Grounder(plan, self.graph, rng, self.keep_literals)
        self.reference = [[] for _ in range(plan.n_turns)]
        leaves = leaf_steps(plan) if swap else set()
        avoid = {w["tool"] for w in self.task.get("withheld") or []}
        self.ep = ep = open_episode(self.task)
        self.states = self.grounder.states = OwnerStates(ep, self.views)
        try:
            turn, offered = -1, set()
            for step in plan.steps:
                if step.turn != turn:
                    turn, offered = step.turn, plan.offered_at(self.task, ep, step.turn)
                alt = substitute(step, ep, offered, self.graph, avoid, rng) \
                    if step.index in leaves and rng.random() < swap else None
                used, args, called = self.step(step, offered, alt)
                self.record(step, used, args, called)
            final = self.final_state()
            tools = dict(ep.tool_index())
        finally:
            ep.close()
        return Execution(self.reference, self.results, final, self.n_repairs, dict(self.kinds), tools,
                         self.grounder.parsed, self.done, self.mutated, self.owners, self.dirty)

    def step(self, step: Step, offered: set[str], alt: Step | None) -> tuple[Step, dict, Called]:
        """One plan step, repaired up to `repairs` times: the step as done, its arguments, its call."""
        owners = {s.path[0] for s in step.sources.values() if s.kind == "state"}
        last = "no attempt"
        for attempt in range(self.repairs + 1):
            if alt is not None:
                used, args = alt, alt.arguments
            else:
                used = step
                try:
                    args = self.grounder.ground(step, functools.partial(live_state, self.ep, owners, self.states),
                                                fresh=attempt > 0)
                except CyclicState:
                    raise
                except StepFailed as exc:
                    last = str(exc)
                    self.n_repairs += attempt > 0
                    continue
            called = self.call(used.name, args, offered)
            if called.ok:
                # the seed's call changed state (or did not): so must this one, or Phi's
                # state edges differ (adding a stock already on the watchlist changes nothing)
                if called.after is None or attempt == self.repairs or called.changed == self.plan.mutated[step.index]:
                    called.redo(self.states)
                    return used, args, called
                called.undo(self.states)
                last = MISMATCH
            else:
                last = called.out.result or called.out.error or "error"
                called.redo(self.states)
                self.dirty = self.dirty or called.changed
            self.n_repairs += 1
            alt = None
        raise StepFailed(last, step.name)

    def call(self, name: str, args: dict, offered: set[str]) -> Called:
        """Run a call, or, when the same call (offered or not) was met on the same owner
        state, give its remembered outcome: it gives the same outcome and leaves the same state."""
        saved = self.states.before(name)
        key = None
        if saved is not None:
            ck = call_key(name, args)
            key = (ck, saved[1], name in offered) if ck is not None else None
        known = self.outcomes.get(key) if key is not None else None
        if known is not None:
            return Called(known[0], saved, known[1], known[2], True)
        out = self.ep.call(name, args, offered)
        after = self.states.after(saved[0]) if saved is not None else None
        parsed = parse_json(out.result or "") if out.ok else None  # read only from here on
        if key is not None and after is not None:
            self.outcomes[key] = (out, after, parsed)
        return Called(out, saved, after, parsed, False)

    def record(self, step: Step, used: Step, args: dict, called: Called) -> None:
        self.reference[step.turn].append({"name": used.name, "arguments": args})
        self.results.append(called.out.result or "")
        self.grounder.parsed.append(called.parsed)
        self.done.append(used)
        self.mutated.append(None if called.after is None else called.changed)
        self.owners.append("" if called.saved is None else called.saved[0])
        for src in used.sources.values():
            self.kinds[src.kind] += 1
        if used is not step:
            self.kinds["swapped"] += 1

    def final_state(self) -> FinalState:
        ep, states = self.ep, self.states
        if not ep.state_survives_close:  # read it now
            digest = final_hash(ep, states)
            return FinalState(None, lambda: digest)
        blobs = {name: states.blob(name) for name in states.owners}
        saved = {name: b for name, b in blobs.items() if b is not None}
        return FinalState(saved if len(saved) == len(blobs) else None, functools.partial(final_hash, ep, states))


def execute(plan: Plan, task: dict, graph: ApiGraph, rng: random.Random, repairs: int,
            keep_literals: bool = False, swap: float = 0.0, outcomes: dict | None = None,
            views: dict | None = None) -> Execution:
    """Ground and execute the plan on a fresh episode of `task`; raises StepFailed when a
    call still fails after `repairs` re-groundings. A leaf step is done by another tool
    with probability `swap` (falling back to its own tool when that fails). `outcomes`
    remembers call outcomes across executions, `views` owner states converted for
    grounding (see OwnerStates.view)."""
    return Executor(plan, task, graph, rng, repairs, keep_literals, {} if outcomes is None else outcomes,
                    views).run(swap)
