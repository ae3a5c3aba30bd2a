"""The co-evolving replay buffer (`rods merge-buffer`, docs/architecture.md section 7).

The buffer file is the whole state of the task pool: every entry is a task plus its status
(pending / active / retired), its per-iteration reward history and a log of every decision
with its reason. `merge_buffer` at iteration n reads the groups of iteration n and the
candidates synthesized in it, and writes the buffer and the batch for iteration n + 1:

1. statistics: each rolled-out entry gets a history row and an EMA of its group mean;
2. injection: candidates enter as `pending` (trainable from created_iter + 1); pending
   entries whose time has come are activated, at most floor(inject_frac x |active pool|) per
   iteration (at least 1), oldest first (staged injection: the pool never shifts faster);
3. retirement (synthetic only, seeds are never retired; off with `retire=False`): mastered
   (EMA > 0.95), unsolvable (EMA < 0.20 after `burn_in` observations), stale (the last
   `stale_iters` groups had zero reward variance: no GRPO gradient);
4. capacity: over `p_max` active synthetic tasks, keep the highest phi (ties: newer
   entry first, then id);
5. the next batch: priority sampling by phi with a floor weight, so that every active
   task has a chance. A never-rolled-out task weighs its expected phi: a synthetic task its
   parent's measured phi (it was made in the parent's shape), a seed the mean phi of the
   measured pool (1 before anything was measured). Counting every unseen task as phi 1
   would let hundreds of unseen seeds crowd out the few tasks synthesized on the boundary.

Deterministic: the same buffer, groups, candidates, options and seed give the same output.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

from rodscli import schemas
from rodscli.config import option
from rodscli.errors import InputError, OptionError

BUFFER_FIELDS = ("status", "added_iter", "trainable_from", "retired_iter", "retire_reason", "n_rollouts",
                 "ema_mean", "last_phi", "last_iter", "history", "log")


@dataclass
class MergeOptions:
    iteration: int = option(0, help="Loop iteration n of the groups and candidates; the next batch is for n + 1.")
    inject_frac: float = option(0.2, help="Staged injection: activate at most this fraction of the active pool per iteration (beta in the paper; --beta is its old name).")
    p_max: int = option(400, help="Cap on active synthetic tasks; over it, the highest phi are kept.")
    retire: bool = option(True, help="Retire synthetic tasks that are mastered, unsolvable or stale (the thresholds "
                          "below); --no-retire keeps every one (the no-retire ablation; the --p-max cap still applies).")
    mastered: float = option(0.95, help="Retire a synthetic task whose EMA mean reward is above this (mastered).")
    unsolvable: float = option(0.20, help="Retire a synthetic task whose EMA mean reward is below this after its burn-in (unsolvable).")
    burn_in: int = option(3, help="Observations a synthetic task gets before it may be retired as unsolvable.")
    stale_iters: int = option(5, help="Retire a synthetic task whose last this-many groups all had zero reward variance (stale).")
    ema_decay: float = option(0.5, help="EMA of the group mean: ema = decay * ema + (1 - decay) * mean.")
    batch_size: int = option(0, help="Tasks in the next batch (0: every trainable active task).")
    floor: float = option(0.05, help="Smallest sampling weight, so that every active task is eventually rolled out.")
    seed: int = option(0, help="Seed of the batch sampling.")

    def check(self) -> None:
        if not 0 <= self.inject_frac <= 1 or self.p_max < 0 or self.batch_size < 0 or self.floor <= 0:
            raise OptionError("need 0 <= --inject-frac <= 1, --p-max >= 0, --batch-size >= 0, --floor > 0", field="--inject-frac")


def entry_from_task(task: dict, iteration: int, *, status: str, trainable_from: int, action: str, reason: str) -> dict:
    """A buffer entry holding `task` (task fields only are taken from it)."""
    entry = {k: v for k, v in task.items() if k not in BUFFER_FIELDS}
    entry.update(status=status, added_iter=iteration, trainable_from=trainable_from, retired_iter=None,
                 retire_reason=None, n_rollouts=0, ema_mean=None, last_phi=None, last_iter=None, history=[],
                 log=[{"iter": iteration, "action": action, "reason": reason}])
    return entry


def init_buffer(tasks: list[dict], iteration: int = 0) -> list[dict]:
    """The initial buffer: every task active from `iteration` (seeds are never retired)."""
    seen: set[str] = set()
    out = []
    for t in tasks:
        if t["id"] in seen:
            raise InputError(f"duplicate task id {t['id']!r}", field="id")
        seen.add(t["id"])
        what = "seed task" if t.get("origin", "seed") == "seed" else f"synthetic task from {t.get('parent_id')}"
        out.append(entry_from_task(t, iteration, status="active", trainable_from=iteration, action="seed",
                                   reason=f"initial pool: {what}"))
    return out


def task_of(entry: dict) -> dict:
    """The task record inside a buffer entry (buffer fields stripped)."""
    task_props = schemas.load("task")["properties"]
    return {k: v for k, v in entry.items() if k in task_props}


def expected_phi(entry: dict) -> float:
    """phi to rank an entry by: its last measured phi; unmeasured entries count as 1 (see them first)."""
    return 1.0 if entry.get("last_phi") is None else float(entry["last_phi"])


def sampling_phi(entries: dict[str, dict], entry: dict, seed_prior: float) -> float:
    """phi to sample an entry by: measured, else the parent's measured phi (synthetic), else `seed_prior`."""
    if entry.get("last_phi") is not None:
        return float(entry["last_phi"])
    parent = entries.get(entry.get("parent_id")) if entry.get("origin") == "synthetic" else None
    if parent is not None and parent.get("last_phi") is not None:
        return float(parent["last_phi"])
    return seed_prior


def _log(entry: dict, iteration: int, action: str, reason: str) -> None:
    entry["log"].append({"iter": iteration, "action": action, "reason": reason})


def _retire(entry: dict, iteration: int, reason: str, why: str) -> None:
    entry["status"] = "retired"
    entry["retired_iter"] = iteration
    entry["retire_reason"] = reason
    _log(entry, iteration, "retire", f"{reason}: {why}")


def update_stats(entries: dict[str, dict], groups: list[dict], opts: MergeOptions) -> Counter:
    """Add each group's statistics to its entry's history and EMA."""
    counts: Counter = Counter()
    n = opts.iteration
    for g in groups:
        e = entries.get(g["task_id"])
        if e is None:
            counts["groups_unknown_task"] += 1
            continue
        it = g.get("iteration")
        it = n if it is None else it
        if any(h["iter"] == it for h in e["history"]):  # a group already merged (re-run): no double count
            counts["groups_already_merged"] += 1
            continue
        e["history"].append({"iter": it, "mean": g["mean"], "phi": g["phi"], "zone": g["zone"],
                             "informative": bool(g["informative"])})
        prev = e.get("ema_mean")
        e["ema_mean"] = g["mean"] if prev is None else opts.ema_decay * prev + (1 - opts.ema_decay) * g["mean"]
        e["n_rollouts"] = (e.get("n_rollouts") or 0) + g["n"]
        e["last_phi"] = g["phi"]
        e["last_iter"] = it
        counts["groups_merged"] += 1
    return counts


def add_candidates(entries: dict[str, dict], order: list[str], candidates: list[dict], opts: MergeOptions) -> Counter:
    """Candidates enter as pending, trainable from created_iter + 1; broken lineage or a known id is rejected."""
    counts: Counter = Counter()
    n = opts.iteration
    for c in candidates:
        if c["id"] in entries:
            counts["rejected_duplicate_id"] += 1
            continue
        if c.get("origin") != "synthetic" or c.get("parent_id") not in entries:
            counts["rejected_lineage"] += 1  # following parent ids must reach a seed of this buffer
            continue
        created = c.get("created_iter")
        created = n if created is None else created
        e = entry_from_task(c, n, status="pending", trainable_from=created + 1, action="inject",
                            reason=f"candidate from {c['parent_id']} made at iteration {created}; trainable from {created + 1}")
        entries[c["id"]] = e
        order.append(c["id"])
        counts["candidates_added"] += 1
    return counts


def activate(entries: dict[str, dict], order: list[str], opts: MergeOptions) -> Counter:
    """Staged injection: pending entries due by iteration n + 1, at most inject_frac x active pool."""
    counts: Counter = Counter()
    n, nxt = opts.iteration, opts.iteration + 1
    active = sum(1 for k in order if entries[k]["status"] == "active")
    # at least one a iteration when inject_frac > 0, or a pool under 5 tasks could never grow
    quota = max(1, math.floor(opts.inject_frac * active)) if opts.inject_frac > 0 else 0
    due = [entries[k] for k in order if entries[k]["status"] == "pending" and entries[k]["trainable_from"] <= nxt]
    due.sort(key=lambda e: (e["added_iter"], e["trainable_from"], e["id"]))
    for i, e in enumerate(due):
        if i < quota:
            e["status"] = "active"
            _log(e, n, "activate", f"injected into the pool for iteration {nxt} ({i + 1} of quota {quota} = "
                                   f"floor({opts.inject_frac} x {active} active))")
            counts["activated"] += 1
        else:
            _log(e, n, "keep", f"pending: injection quota {quota} of iteration {nxt} is used up")
            counts["deferred"] += 1
    return counts


def retire(entries: dict[str, dict], order: list[str], opts: MergeOptions) -> Counter:
    """Retire mastered, unsolvable and stale synthetic tasks; seeds are only logged."""
    counts: Counter = Counter()
    n = opts.iteration
    for k in order:
        e = entries[k]
        if e["status"] != "active" or not e["history"]:
            continue
        ema = e.get("ema_mean")
        reason, why = None, ""
        if ema is not None and ema > opts.mastered:
            reason, why = "mastered", f"EMA mean {ema:.3f} > {opts.mastered}"
        elif ema is not None and ema < opts.unsolvable and len(e["history"]) >= opts.burn_in:
            reason, why = "unsolvable", f"EMA mean {ema:.3f} < {opts.unsolvable} after {len(e['history'])} observations"
        else:
            recent = e["history"][-opts.stale_iters:] if opts.stale_iters > 0 else []
            if opts.stale_iters > 0 and len(recent) >= opts.stale_iters and not any(h.get("informative", h["phi"] > 0) for h in recent):
                reason, why = "stale", f"no reward variance in the last {opts.stale_iters} groups"
        if reason is None:
            continue
        if e.get("origin") == "seed":
            if e.get("last_iter") == n:  # log once per observation, not every iteration
                _log(e, n, "keep", f"seed task, never retired (would be {reason}: {why})")
                counts["seed_protected"] += 1
            continue
        _retire(e, n, reason, why)
        counts[f"retired_{reason}"] += 1
    return counts


def enforce_capacity(entries: dict[str, dict], order: list[str], opts: MergeOptions) -> Counter:
    """Over p_max active synthetic tasks: keep the highest phi (ties: newer first, then id)."""
    counts: Counter = Counter()
    synth = [entries[k] for k in order if entries[k]["status"] == "active" and entries[k].get("origin") == "synthetic"]
    if len(synth) <= opts.p_max:
        return counts
    synth.sort(key=lambda e: (-expected_phi(e), -e["added_iter"], e["id"]))
    cut = expected_phi(synth[opts.p_max - 1]) if opts.p_max > 0 else None
    for e in synth[opts.p_max:]:
        _retire(e, opts.iteration, "capacity", f"{len(synth)} active synthetic > p_max {opts.p_max}; "
                                               f"phi {expected_phi(e):.3f} below the kept ones (last kept {cut})")
        counts["retired_capacity"] += 1
    return counts


def next_batch(entries: dict[str, dict], order: list[str], opts: MergeOptions) -> list[dict]:
    """The tasks to roll out at iteration n + 1: priority sampling by phi with a floor.

    Weighted sampling without replacement (Efraimidis-Spirakis keys u^(1/w)); w = max(floor,
    phi), unmeasured tasks their expected phi (`sampling_phi`). Returned in buffer order.
    """
    nxt = opts.iteration + 1
    pool = [k for k in order if entries[k]["status"] == "active" and entries[k]["trainable_from"] <= nxt]
    if opts.batch_size <= 0 or opts.batch_size >= len(pool):
        chosen = set(pool)
    else:
        rng = random.Random(f"{opts.seed}:batch:{nxt}")
        measured = [entries[k]["last_phi"] for k in pool if entries[k].get("last_phi") is not None]
        seed_prior = sum(measured) / len(measured) if measured else 1.0
        keyed = []
        for k in pool:
            w = max(opts.floor, sampling_phi(entries, entries[k], seed_prior))
            keyed.append((rng.random() ** (1.0 / w), k))
        keyed.sort(key=lambda x: (-x[0], x[1]))
        chosen = {k for _, k in keyed[: opts.batch_size]}
    return [task_of(entries[k]) for k in order if k in chosen]


def merge_buffer(buffer: list[dict], groups: list[dict], candidates: list[dict],
                 opts: MergeOptions) -> tuple[list[dict], list[dict], dict]:
    """One buffer step at iteration n: (new buffer, next batch, summary counts)."""
    entries: dict[str, dict] = {}
    order: list[str] = []
    for e in buffer:
        if e["id"] in entries:
            raise InputError(f"duplicate buffer entry {e['id']!r}", field="id")
        copy = {**e, "history": list(e.get("history") or []), "log": list(e.get("log") or [])}
        entries[e["id"]] = copy
        order.append(e["id"])
    counts: Counter = Counter()
    counts += update_stats(entries, groups, opts)
    if opts.retire:
        counts += retire(entries, order, opts)
    counts += add_candidates(entries, order, candidates, opts)
    counts += activate(entries, order, opts)
    counts += enforce_capacity(entries, order, opts)
    batch = next_batch(entries, order, opts)
    out = [entries[k] for k in order]
    summary = {**pool_composition(out), **{k: v for k, v in sorted(counts.items())}, "batch": len(batch)}
    return out, batch, summary


def pool_composition(buffer: list[dict]) -> dict:
    c: Counter = Counter()
    for e in buffer:
        if e["status"] == "retired":
            c[f"retired_total_{e.get('retire_reason')}"] += 1
        else:
            c[f"{e['status']}_{e.get('origin', 'seed')}"] += 1
    return {k: c[k] for k in sorted(c)}


def lineage_root(entries: dict[str, dict], task_id: str) -> str | None:
    """Follow parent ids from `task_id` to a seed; None if the chain breaks or loops."""
    seen = set()
    cur = entries.get(task_id)
    while cur is not None and cur["id"] not in seen:
        if cur.get("origin") == "seed":
            return cur["id"]
        seen.add(cur["id"])
        cur = entries.get(cur.get("parent_id"))
    return None
