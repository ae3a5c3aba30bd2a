"""Why a study came out as it did: what changed on the held-out tasks, and what the training
batches held. Part of `rods report STUDY --study` (study.json "diagnosis", two printed tables).

A mean held-out difference does not say *how* a policy improved. Two readings answer most of
that from the runs' own records, without running anything:

- **held-out changes**: per arm, against the start's per-task scores, how many held-out tasks
  went up and down (mean over seeds), how many distinct tasks changed in any seed, and how
  many of those are shared by every seed of every arm (the same few tasks moving everywhere
  means the arms learned the same thing); with the mean tool calls per task before and after,
  and the call turns passed (eval records that count them) — progress can rise by calling
  *less* on turns whose reference makes no call, which the call turns separate out;
- **training groups**: per arm, the groups the loop trained on (every iteration's
  groups.parquet) by origin (seed, synthetic) and skill type: how many, their mean reward and
  the fraction informative (reward spread within the group, the only groups GRPO learns from);
  and the zones (a boundary set that empties, or synthetic tasks that are all mastered, show here);
- **batches against the baseline**: per arm and seed, the iterations whose rolled-out tasks
  differ from the baseline's of the same seed. Every stage is deterministic given its inputs
  and seed, so an arm whose batches were the baseline's at every iteration repeated the
  baseline run step for step: its difference is 0 by construction, not a measured null (a
  small budget on a large seed pool does this: synthesized tasks never reach a batch).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from rodscli.stages.eval import aggregate
from rodscli.stages.report import _read, batch_differences, iteration_dirs

# the fields of a training group the diagnosis reads (a group record is much larger)
GROUP_FIELDS = ["origin", "skill", "mean", "informative", "zone"]


def _changes(start: dict[str, dict], end: dict[str, dict]) -> tuple[set[str], set[str]]:
    """Held-out task ids whose progress rose and fell between two evals of one run."""
    common = start.keys() & end.keys()
    up = {t for t in common if end[t]["progress"] > start[t]["progress"]}
    down = {t for t in common if end[t]["progress"] < start[t]["progress"]}
    return up, down


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def heldout_changes(arms: dict[str, dict[int, Path]], iteration: int, task_scores) -> dict[str, Any]:
    """Per arm: tasks up / down against the start (mean over seeds), the distinct tasks changed,
    calls per task and call turns passed before and after; and the tasks changed in every run."""
    out: dict[str, Any] = {}
    every_run: list[set[str]] = []
    for arm, runs in arms.items():
        ups, downs, changed = [], [], Counter()
        calls0, calls1, turns0, turns1, n_turns = [], [], [], [], None
        for run in runs.values():
            start, end = task_scores(run, 0), task_scores(run, iteration)
            if not start or not end:
                continue
            up, down = _changes(start, end)
            ups.append(len(up))
            downs.append(len(down))
            changed.update(up | down)
            every_run.append(up | down)
            before, after = (aggregate(list(scores.values()))[-1] for scores in (start, end))  # the overall records
            calls0.append(before["n_calls"])
            calls1.append(after["n_calls"])
            for overall, sink in ((before, turns0), (after, turns1)):
                if overall.get("call_turns_passed") is not None:
                    sink.append(overall["call_turns_passed"])
            n_turns = after.get("call_turns")
        out[arm] = {"runs": len(ups), "tasks_up": _mean(ups), "tasks_down": _mean(downs), "tasks_changed": len(changed),
                    "changed": dict(sorted(changed.items(), key=lambda kv: (-kv[1], kv[0]))), "calls_per_task": [_mean(calls0), _mean(calls1)],
                    "call_turns": n_turns, "call_turns_passed": [_mean(turns0), _mean(turns1)]}
    shared = set.intersection(*every_run) if every_run else set()
    return {"iteration": iteration, "arms": out, "changed_in_every_run": sorted(shared)}


def _aggregate(groups: list[dict], key: str) -> dict[str, dict[str, Any]]:
    by: dict[str, list[dict]] = defaultdict(list)
    for g in groups:
        by[str(g.get(key))].append(g)
    return {k: {"groups": len(v), "reward": _mean([g["mean"] for g in v]),
                "informative": _mean([1.0 if g["informative"] else 0.0 for g in v])} for k, v in sorted(by.items())}


def training_groups(arms: dict[str, dict[int, Path]], iteration: int) -> dict[str, Any]:
    """Per arm, the groups of the first `iteration` iterations of every seed, by origin, by skill
    type and by zone."""
    out = {}
    for arm, runs in arms.items():
        groups: list[dict] = []
        for run in runs.values():
            for number, folder in iteration_dirs(run):
                if number < iteration:
                    groups += _read(folder / "groups.parquet", "group", GROUP_FIELDS) or []
        out[arm] = {"groups": len(groups), "by_origin": _aggregate(groups, "origin"), "by_skill": _aggregate(groups, "skill"),
                    "zones": dict(Counter(g.get("zone") for g in groups).most_common())}
    return out


def batches_against(summaries: dict[str, dict[int, dict]], iteration: int, baseline: str) -> dict[str, Any]:
    """Per arm other than the baseline: for each seed both have, the iterations (below the
    compared one) both rolled out and those whose batch differs from the baseline's (run
    summaries of stages/report.py); `same_seeds` lists the seeds that repeated it."""
    if baseline not in summaries:
        return {}
    out = {}
    for arm, runs in summaries.items():
        if arm == baseline:
            continue
        per_seed = {}
        for seed in sorted(runs.keys() & summaries[baseline].keys()):
            compared, different = batch_differences(runs[seed], summaries[baseline][seed], before=iteration)
            per_seed[str(seed)] = {"compared": compared, "different": different}
        same = [int(s) for s, v in per_seed.items() if v["compared"] and not v["different"]]
        out[arm] = {"seeds": per_seed, "same_seeds": same}
    return {"baseline": baseline, "arms": out}


def batch_warnings(batches: dict) -> list[str]:
    """One line per arm that trained on the baseline's batches in some seed."""
    lines = []
    for arm, b in batches.get("arms", {}).items():
        if b["same_seeds"]:
            lines.append(f"{arm} rolled out exactly the {batches['baseline']} arm's batches at every compared iteration "
                         f"in seed(s) {', '.join(map(str, b['same_seeds']))} of {len(b['seeds'])}: those runs repeat "
                         f"the {batches['baseline']} runs step for step, so their difference is 0 by construction "
                         f"(synthesized tasks never reached a batch: a larger budget or a smaller seed pool)")
    return lines


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _num(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def change_rows(diagnosis: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the held-out changes table (what the tests read)."""
    changes = diagnosis["heldout"]
    header = ["arm", "runs", "tasks up", "tasks down", "distinct changed", "calls/task", "call turns passed"]
    rows = []
    for arm, c in changes["arms"].items():
        before, after = c["calls_per_task"]
        t0, t1 = c["call_turns_passed"]
        turns = "-" if t1 is None else f"{_num(t0)} -> {_num(t1)} of {c['call_turns']:g}"
        rows.append([arm, str(c["runs"]), _num(c["tasks_up"]), _num(c["tasks_down"]), str(c["tasks_changed"]),
                     f"{_num(before, '.2f')} -> {_num(after, '.2f')}", turns])
    return header, rows


def group_rows(diagnosis: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the training groups table: count, mean reward, informative share."""
    header = ["arm", "groups", "zones", "by origin: n / reward / informative", "by skill: n / reward / informative"]
    rows = []
    for arm, g in diagnosis["groups"].items():
        def cell(parts: dict) -> str:
            return ", ".join(f"{k} {v['groups']} / {_num(v['reward'], '.3f')} / {_pct(v['informative'])}" for k, v in parts.items())
        zones = ", ".join(f"{k} {v}" for k, v in g["zones"].items())
        rows.append([arm, str(g["groups"]), zones, cell(g["by_origin"]), cell(g["by_skill"])])
    return header, rows


def render(diagnosis: dict) -> list[Any]:
    from rich.table import Table

    tables = []
    shared = diagnosis["heldout"]["changed_in_every_run"]
    for title, (header, rows) in (
        (f"held-out tasks changed against the start after {diagnosis['heldout']['iteration']} iterations "
         f"(tasks changed in every run: {len(shared)})", change_rows(diagnosis)),
        ("training groups (all iterations up to the compared eval, every seed)", group_rows(diagnosis)),
    ):
        t = Table(title=title, title_justify="left")
        for h in header:
            t.add_column(h, justify="left" if h == "arm" or h.startswith("by ") or h == "zones" else "right")
        for cells in rows:
            t.add_row(*cells)
        tables.append(t)
    return tables + batch_warnings(diagnosis.get("batches", {}))
