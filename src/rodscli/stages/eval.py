"""`rods eval`: greedy (or pass@k) episodes of a policy on held-out tasks.

The episodes are run by the rollout stage and scored by the score stage (the same code the
training loop uses, so held-out numbers and training rewards mean the same thing); this
module only turns scored episodes into one record per task and aggregates them per skill
type and over all tasks (schema `eval`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from rodscli.config import option
from rodscli.errors import InputError, OptionError
from rodscli.reporter import Reporter
from rodscli.rewards import IRRELEVANCE_RULES
from rodscli.schemas import skill_order


@dataclass
class EvalOptions:
    k: int = option(1, help="Episodes per task; success is pass@k (a task succeeds when any of its k episodes has outcome 1). k > 1 needs --no-greedy.")
    greedy: bool = option(True, help="Greedy decoding (temperature 0, one episode per task); --no-greedy samples k episodes at --temperature.")
    iteration: int | None = option(None, help="GRPO iterations the policy had been trained for (written into the records; the loop sets it).")
    irrelevance: str = option("v3", help="How a turn whose reference is empty is scored, as `rods score --irrelevance`: v3 (default) or official (docs/bfcl-reward.md).")

    def check(self) -> None:
        if self.irrelevance not in IRRELEVANCE_RULES:
            raise OptionError(f"--irrelevance must be one of {', '.join(IRRELEVANCE_RULES)}, got {self.irrelevance!r}")
        if self.k < 1:
            raise OptionError(f"--k must be at least 1, got {self.k}")
        if self.greedy and self.k > 1:
            raise OptionError("greedy decoding gives the same episode k times: use --no-greedy with --k > 1")


def call_turns(task: dict | None, episodes: list[dict]) -> tuple[int | None, float | None]:
    """The task's turns whose reference makes calls, and how many of them its episodes pass
    (turn score 1), averaged over the episodes; (None, None) without the task's reference.
    A turn whose reference makes no call (ask, decline) is not counted: it is passed by not
    calling, which tells nothing of whether the policy can call."""
    if not task or "reference" not in task:
        return None, None
    turns = [i for i, calls in enumerate(task["reference"]) if calls]
    passed = sum(1 for e in episodes for i in turns if e["turn_scores"][i] >= 1.0)  # one score per reference turn
    return len(turns), passed / len(episodes)


def call_turns_text(record: dict) -> str:
    """'passed / turns' of an eval record ('-' when it has no call-turn counts)."""
    turns, passed = record.get("call_turns"), record.get("call_turns_passed")
    if turns is None or passed is None:
        return "-"
    return f"{passed:g} / {turns}"


def task_record(episodes: list[dict], task: dict | None, policy_id: str, cfg: EvalOptions) -> dict[str, Any]:
    """One task's eval record from its k scored episodes (the task gives its domain and its call turns)."""
    first = episodes[0]
    n_call_turns, passed = call_turns(task, episodes)
    k = len(episodes)
    outcomes = [e["outcome"] for e in episodes]
    progress = [e["progress"] for e in episodes]
    reasons: dict[str, int] = defaultdict(int)
    for e in episodes:
        reasons[e["finish_reason"]] += 1
    return {
        "kind": "task",
        "key": first["task_id"],
        "task_id": first["task_id"],
        "skill": first["skill"],
        "domain": task.get("domain") if task else None,
        "policy_id": policy_id,
        "iteration": cfg.iteration,
        "greedy": cfg.greedy,
        "k": k,
        "n_tasks": 1,
        "episodes": k,
        "success": 1.0 if any(o >= 1.0 for o in outcomes) else 0.0,
        "success_mean": sum(outcomes) / k,
        "progress": sum(progress) / k,
        "progress_best": max(progress),
        "validity": sum(e["validity"] for e in episodes) / k,
        "n_calls": sum(len(e.get("calls") or []) for e in episodes) / k,
        "call_turns": n_call_turns,
        "call_turns_passed": passed,
        "finish_reasons": dict(sorted(reasons.items())),
    }


def _combine(kind: str, key: str, skill: str | None, tasks: list[dict]) -> dict[str, Any]:
    n = len(tasks)
    episodes = sum(t["episodes"] for t in tasks)
    reasons: dict[str, int] = defaultdict(int)
    for t in tasks:
        for r, c in (t.get("finish_reasons") or {}).items():
            reasons[r] += c

    def per_task_mean(field: str) -> float:
        return sum(t[field] for t in tasks) / n

    def total(field: str) -> float | None:  # over the tasks, when every task has it
        return sum(t[field] for t in tasks) if all(t.get(field) is not None for t in tasks) else None

    def per_episode_mean(field: str) -> float | None:
        vals = [(t[field], t["episodes"]) for t in tasks if t.get(field) is not None]
        weight = sum(w for _, w in vals)
        return sum(v * w for v, w in vals) / weight if weight else None

    first = tasks[0]
    return {
        "kind": kind,
        "key": key,
        "task_id": None,
        "skill": skill,
        "domain": None,
        "policy_id": first["policy_id"],
        "iteration": first.get("iteration"),
        "greedy": first.get("greedy", True),
        "k": first["k"],
        "n_tasks": n,
        "episodes": episodes,
        "success": per_task_mean("success"),
        "success_mean": per_episode_mean("success_mean"),
        "progress": per_episode_mean("progress"),
        "progress_best": per_task_mean("progress_best") if all("progress_best" in t for t in tasks) else None,
        "validity": per_episode_mean("validity"),
        "n_calls": per_episode_mean("n_calls"),
        "call_turns": total("call_turns"),
        "call_turns_passed": total("call_turns_passed"),
        "finish_reasons": dict(sorted(reasons.items())),
    }


def aggregate(task_records: list[dict]) -> list[dict]:
    """Per-skill records (in the paper's skill order) and the overall record, from task records.

    success is the mean over tasks of pass@k; progress the mean over episodes (every task has
    the same k, so it is also the mean over tasks).
    """
    if not task_records:
        return []
    by_skill: dict[str, list[dict]] = defaultdict(list)
    for t in task_records:
        by_skill[t["skill"]].append(t)
    out = [_combine("skill", s, s, by_skill[s]) for s in sorted(by_skill, key=skill_order)]
    out.append(_combine("all", "all", None, task_records))
    return [{k: v for k, v in r.items() if v is not None or k in ("task_id", "skill", "domain")} for r in out]


def summarize(scored: list[dict], tasks_by_id: dict[str, dict], policy_id: str, cfg: EvalOptions) -> list[dict]:
    """Task records (in first-seen task order) followed by the per-skill and overall records."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for episode in scored:
        by_task[episode["task_id"]].append(episode)
    tasks = [task_record(eps, tasks_by_id.get(tid), policy_id, cfg) for tid, eps in by_task.items()]
    return tasks + aggregate(tasks)


def evaluate(tasks: list[dict], backend: Any, cfg: EvalOptions, rollout_opts: Any, seed: int = 0,
             reporter: Reporter | None = None) -> tuple[list[dict], list[dict]]:
    """Run k episodes of every task with the rollout stage, score them with the score stage.

    Returns (eval records, scored episodes). `rollout_opts` is the rollout stage's options
    (backend limits, temperature for --no-greedy); its group size and temperature are set
    here from k and greedy. The episodes are counted as "eval" on `reporter`.
    """
    from rodscli.stages.rollout import rollout
    from rodscli.stages.score import ScoreConfig, score

    cfg.check()
    if not tasks:
        raise InputError("no tasks to evaluate")
    opts = replace(rollout_opts, group_size=cfg.k, temperature=0.0 if cfg.greedy else rollout_opts.temperature)
    episodes = rollout(tasks, backend, opts, seed, reporter, description="eval")
    scored = list(score(episodes, tasks, ScoreConfig(irrelevance=cfg.irrelevance)))
    by_id = {t["id"]: t for t in tasks}
    return summarize(scored, by_id, scored[0]["policy_id"], cfg), scored
