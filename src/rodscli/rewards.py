"""Reward formulas (docs/architecture.md section 4), written out where they happen.

Every function here is pure: it takes an agent's calls (rollout.calls[] records), the
task's reference calls and the reference executed on fresh state (envs.ReferenceTrace),
and returns numbers. `stages/score.py` wires them to records and files.

Conventions a reader needs (the issue leaves them to us):
- A *silent* trajectory (no tool call at all) scores a component as 1 only when silence
  is the reference (the task has no reference call); otherwise 0. So doing nothing never
  earns validity, precision or argument accuracy.
- An *unparseable* call (error parse_error, name null) counts as an attempted call: it
  fails all three validity checks, counts for the efficiency budget, and is what the
  format penalty measures. Name precision only looks at calls that have a name.
- Coverage matches by tool name on calls that executed without error; argument values are
  measured separately by `arg_accuracy` on the same matched pairs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rodscli.envs.base import PARSE_ERROR, ReferenceTrace, type_matches

# ---------------------------------------------------------------------------------------
# progress and outcome (RODS)


IRRELEVANCE_RULES = ("v3", "official")


def turn_scores(
    calls: Sequence[dict],
    reference: Sequence[Sequence[dict]],
    trace: ReferenceTrace,
    turn_state_hashes: Sequence[str],
    n_turns_reached: int,
    irrelevance: str = "v3",
) -> list[int]:
    """Per user turn t, BFCL's multi-turn check:
    - a turn whose reference makes calls passes when the agent made at least one call in
      it (BFCL's empty_turn_model_response), the state after t equals the reference state
      after turns 1..t, and every reference result of t is among the results the agent
      obtained in turns <= t (a multiset inclusion);
    - a turn whose reference is empty: with irrelevance 'v3' (BFCL v3, the paper's
      setting) it passes when the agent made no call in it and the state is the
      reference's; with 'official' (bfcl-eval 2026) it is not checked: it passes.
    A call is one that was parsed (an unparseable one is dropped, as BFCL's decoder drops
    it). A turn never reached scores 0."""
    if irrelevance not in IRRELEVANCE_RULES:
        raise ValueError(f"irrelevance rule must be one of {IRRELEVANCE_RULES}, got {irrelevance!r}")
    obtained: Counter[str] = Counter()
    made: set[int] = set()  # turns with a parsed call
    by_turn: dict[int, list[dict]] = {}
    for call in calls:
        by_turn.setdefault(call["turn"], []).append(call)
        if call.get("name") is not None:
            made.add(call["turn"])
    scores = []
    for t, ref_calls in enumerate(reference):
        # results obtained so far include this turn's: earlier turns' calls count for later turns
        for call in by_turn.get(t, ()):
            if call.get("result") is not None:
                obtained[call["result"]] += 1
        if t >= n_turns_reached or t >= len(turn_state_hashes):
            scores.append(0)
            continue
        if not ref_calls:
            if irrelevance == "official":
                scores.append(1)
            else:
                scores.append(int(t not in made and turn_state_hashes[t] == trace.state_hashes[t]))
            continue
        if t not in made:
            scores.append(0)
            continue
        state_ok = turn_state_hashes[t] == trace.state_hashes[t]
        needed = Counter(trace.results[t])
        results_ok = all(obtained[r] >= k for r, k in needed.items())
        scores.append(int(state_ok and results_ok))
    return scores


def progress_reward(scores: Sequence[int]) -> float:
    """R_progress = (1/N) sum_t score_t over all N user turns."""
    return sum(scores) / len(scores) if scores else 0.0


def outcome_reward(scores: Sequence[int]) -> float:
    """1 when every user turn passes."""
    return float(bool(scores) and all(scores))


# ---------------------------------------------------------------------------------------
# PROVE components


def arguments_typed(schema: dict | None, arguments: Any) -> bool:
    """Required arguments present, and every argument the schema knows has a compatible type."""
    if schema is None or not isinstance(arguments, dict):
        return False
    params = schema.get("function", schema).get("parameters") or {}
    props = params.get("properties") or {}
    if any(name not in arguments for name in params.get("required") or []):
        return False
    return all(
        type_matches(value, props[name].get("type"))
        for name, value in arguments.items()
        if name in props and value is not None
    )


def call_validity(call: dict, tools: dict[str, dict]) -> float:
    """(name exists among the task's tools + required arguments typed + executed without error) / 3."""
    name = call.get("name")
    name_ok = isinstance(name, str) and name in tools
    args_ok = name_ok and arguments_typed(tools[name], call.get("arguments"))
    ran_ok = call.get("error") is None
    return (name_ok + args_ok + ran_ok) / 3


def validity(calls: Sequence[dict], tools: dict[str, dict], n_ref: int) -> float:
    """Mean call validity over every attempted call (silent: 1 iff the reference is empty)."""
    if not calls:
        return float(n_ref == 0)
    return sum(call_validity(c, tools) for c in calls) / len(calls)


def chain_parents(n_ref: int) -> list[set[int]]:
    """The fallback dependency graph when a task's profile has no edges: each call depends
    on the one before it, so coverage becomes the longest reference prefix the agent
    reproduced in order."""
    return [set() if j == 0 else {j - 1} for j in range(n_ref)]


def match_reference(flat_ref: Sequence[dict], calls: Sequence[dict], parents: Sequence[set[int]]) -> list[int | None]:
    """Align reference calls to agent calls, respecting dependency edges.

    Reference calls are visited in order; call j is covered when every parent of j is
    covered and some unused agent call with j's name, executed without error, comes after
    all the agent calls that covered j's parents (the earliest such call is taken).
    Independent calls may come in any order. Returns, per reference call, the index of
    the agent call that covered it, or None.
    """
    used: set[int] = set()
    pos: list[int | None] = []
    for j, ref in enumerate(flat_ref):
        deps = [pos[p] for p in parents[j] if p < j]
        if any(d is None for d in deps):
            pos.append(None)
            continue
        after = max(deps, default=-1)
        found = None
        for i in range(after + 1, len(calls)):
            c = calls[i]
            if i not in used and c.get("error") is None and c.get("name") == ref["name"]:
                found = i
                break
        if found is not None:
            used.add(found)
        pos.append(found)
    return pos


def coverage(matches: Sequence[int | None]) -> float:
    """Fraction of reference calls covered (an empty reference is fully covered)."""
    if not matches:
        return 1.0
    return sum(m is not None for m in matches) / len(matches)


def argument_accuracy(flat_ref: Sequence[dict], calls: Sequence[dict], matches: Sequence[int | None]) -> float:
    """Mean over matched pairs of the fraction of the reference's arguments whose values the
    agent gave exactly (JSON equality; 1 == 1.0). No matched pair: 1 iff nothing was to match."""
    pairs = [(flat_ref[j], calls[i]) for j, i in enumerate(matches) if i is not None]
    if not pairs:
        return float(not flat_ref and not calls)
    total = 0.0
    for ref, call in pairs:
        want = ref.get("arguments") or {}
        got = call.get("arguments") or {}
        total += sum(k in got and got[k] == v for k, v in want.items()) / len(want) if want else 1.0
    return total / len(pairs)


def efficiency_budget(n_ref: int, beta: float) -> int:
    """B = n_ref + ceil(beta * n_ref): the calls allowed before the penalty starts."""
    return n_ref + math.ceil(beta * n_ref)


def efficiency_penalty(n_calls: int, n_ref: int, alpha: float = 0.5, beta: float = 0.5) -> float:
    """Adaptive efficiency penalty -alpha * max(0, n_calls - B) / B.

    With no reference call the budget is 0 calls and the denominator 1: each call costs alpha.
    """
    budget = efficiency_budget(n_ref, beta)
    over = max(0, n_calls - budget)
    return -alpha * over / max(budget, 1) if over else 0.0


def name_precision(calls: Sequence[dict], flat_ref: Sequence[dict]) -> float:
    """Fraction of named calls whose tool appears in the reference (silent: 1 iff the reference is empty)."""
    named = [c["name"] for c in calls if isinstance(c.get("name"), str)]
    if not named:
        return float(not flat_ref)
    wanted = {r["name"] for r in flat_ref}
    return sum(n in wanted for n in named) / len(named)


def format_penalty(calls: Sequence[dict]) -> float:
    """Minus the fraction of attempted calls that could not be parsed (0 with no calls)."""
    if not calls:
        return 0.0
    return -sum(c.get("error") == PARSE_ERROR or c.get("name") is None for c in calls) / len(calls)


# default weights of the PROVE total: the positive components sum to 1, penalties add as they are
PROVE_WEIGHTS: dict[str, float] = {
    "validity": 0.2,
    "coverage": 0.4,
    "name_precision": 0.2,
    "arg_accuracy": 0.2,
    "efficiency": 1.0,
    "format_penalty": 1.0,
    "progress": 0.0,
    "outcome": 0.0,
}


def prove_reward(components: dict[str, float], weights: dict[str, float]) -> float:
    """Weighted sum of the components, clipped to [0, 1] so that group statistics (phi, zones)
    keep the meaning they have for a [0, 1] reward."""
    total = sum(w * components[name] for name, w in weights.items() if w)
    return min(1.0, max(0.0, total))
