"""The checks a candidate must pass to be accepted, cheap ones first.

Each filter is a small object: `keep(candidate)` says whether the candidate passes, and
its `reason` is what a rejection is counted as in the stats. A filter may record what it
computed on the candidate for later filters and the record (the call keys, the Jaccard
similarity, Phi and its distance to the seed's), and hears of every accepted candidate
(`accepted`: the near-duplicate index grows). A new check is one new subclass, put in
the chain `Synthesizer.filters` makes.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import chain

import orjson

from rodscli.envs.base import offered_tools, open_episode, tool_name
from rodscli.profile import CallTrace, compute_profile, profile_distance, trace_calls
from rodscli.synth.execute import Execution
from rodscli.synth.failures import StepFailed
from rodscli.synth.plan import Plan
from rodscli.synth.states import FinalState


@dataclass
class Candidate:
    """A variant task being checked, and what the filters found out about it."""

    plan: Plan
    task: dict  # the variant: the seed's environment, a new world, the executed reference
    run: Execution
    keys: frozenset[str] = frozenset()  # its calls (see call_keys)
    similarity: float = 0.0  # the largest Jaccard similarity to a known task or accepted candidate
    replayed: CallTrace | None = None  # the trace of the replay
    profile: dict | None = None  # Phi(candidate)
    distance: float = 0.0  # its distance to the seed's Phi

    @functools.cached_property
    def known(self) -> CallTrace | None:
        """The generation's own trace, when it is exactly what a replay runs (see Execution.call_trace)."""
        return self.run.call_trace()


class Filter(ABC):
    """One check (see the module doc)."""

    reason = ""

    @abstractmethod
    def keep(self, c: Candidate) -> bool:
        """Whether the candidate passes this check (False: rejected, counted under `reason`)."""

    def accepted(self, c: Candidate) -> None:  # noqa: B027 - optional hook
        """A candidate passed every filter."""


class Trivial(Filter):
    """At least one call."""

    reason = "trivial"

    def keep(self, c: Candidate) -> bool:
        return any(c.run.reference)


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


class NearDuplicate(Filter):
    """Jaccard similarity of call sets (name and arguments) below `max_jaccard` against every
    known task and accepted candidate."""

    reason = "near_duplicate"

    def __init__(self, max_jaccard: float, known: list[dict]):
        self.max_jaccard = max_jaccard
        self.index = DuplicateIndex()
        for t in known:
            self.index.add(call_keys(t))

    def keep(self, c: Candidate) -> bool:
        c.keys = call_keys(c.task)
        c.similarity = self.index.max_jaccard(c.keys)
        return c.similarity < self.max_jaccard

    def accepted(self, c: Candidate) -> None:
        self.index.add(c.keys)


class ProfileMatch(Filter):
    """Phi(candidate) within `tolerance` of the seed's, with no failed reference call.

    Phi comes from the generation's own trace when that is exactly what a replay runs,
    else from the replay's: put once before the replay and once after it; the first one
    with a trace decides, the other passes.
    """

    reason = "profile_mismatch"

    def __init__(self, tolerance: float):
        self.tolerance = tolerance

    def keep(self, c: Candidate) -> bool:
        trace = c.replayed if c.replayed is not None else c.known
        if c.profile is not None or trace is None:
            return True
        c.profile = compute_profile(c.task, trace)
        c.distance = profile_distance(c.profile, c.plan.profile)
        return not c.profile["ref_errors"] and c.distance <= self.tolerance


class Replay(Filter):
    """The reference on a fresh episode gives the same results and the same final state.

    A failed call that changed state in the generating episode (a repair) leaves state no
    replay sees: then only the results must agree (the final state is the replay's).
    `views` as in `execute`.
    """

    reason = "replay_failed"

    def __init__(self, views: dict | None = None):
        self.views = views

    def keep(self, c: Candidate) -> bool:
        ok, c.replayed = replays(c.task, c.run.results, c.run.final if not c.run.dirty else None, c.known,
                                 self.views, c.plan)
        return ok


def replays(task: dict, results: list[str], final: FinalState | None, known: CallTrace | None = None,
            views: dict | None = None, plan: Plan | None = None) -> tuple[bool, CallTrace]:
    """The reference on a fresh episode: no error, the same results, the same final state
    (when `final` is given; `views` as in `execute`; `plan` keeps the tools offered per
    turn). With `known` (the generation's own trace) the replay only runs the calls; else
    it also fingerprints the state around each call for Phi."""
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
