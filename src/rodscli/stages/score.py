"""`rods score`: rollouts -> scored rollouts (docs/architecture.md section 4).

For each rollout, the task's reference calls are executed turn by turn on a fresh episode
(`envs.replay_reference`) and the trajectory is scored against them: the per-turn pass,
the progress and outcome rewards, and the PROVE components, each in its own column; the
training reward `reward` is the one `--reward` picks. The reference of a task is replayed
once and reused for its G rollouts (unless the cache is turned off, for benchmarks).

Scoring is a pure, streaming function of the records: `score(rollouts, tasks, cfg)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from rodscli import rewards
from rodscli.config import option
from rodscli.envs.base import (
    PARSE_ERROR,
    ReferenceTrace,
    offered_tools,
    open_episode,
    replay_reference,
    tool_name,
)
from rodscli.errors import InputError, OptionError
from rodscli.profile import compute_profile

REWARDS = ("progress", "outcome", "prove")


@dataclass
class ScoreConfig:
    """Options of `rods score`."""

    reward: str = option("progress", help="Training reward written to `reward`: progress (RODS, default), outcome (1 iff every turn passes) or prove (weighted PROVE components).")
    weights: str = option("", help="PROVE weights as name=value pairs, e.g. 'coverage=0.5,validity=0.1'. Names: validity, coverage, name_precision, arg_accuracy, efficiency, format_penalty, progress, outcome. Unnamed ones keep their defaults (0.2, 0.4, 0.2, 0.2, 1, 1, 0, 0).")
    alpha: float = option(0.5, help="Scale alpha of the efficiency penalty -alpha*max(0, n_calls - B)/B.")
    beta: float = option(0.5, help="Budget slack beta of the efficiency penalty: B = n_ref + ceil(beta*n_ref).")
    irrelevance: str = option("v3", help="A call in a turn whose reference is empty: v3 (default, BFCL v3 and the paper) fails the turn; official (the bfcl-eval 2026 checker) does not check such a turn. See docs/bfcl-reward.md.")
    cache: bool = option(True, help="Replay each task's reference once for all its rollouts; --no-cache replays it per rollout (for benchmarks).")

    def check(self) -> None:
        if self.reward not in REWARDS:
            raise OptionError(f"--reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        if self.irrelevance not in rewards.IRRELEVANCE_RULES:
            raise OptionError(f"--irrelevance must be one of {', '.join(rewards.IRRELEVANCE_RULES)}, got {self.irrelevance!r}")
        parse_weights(self.weights)


def parse_weights(text: str) -> dict[str, float]:
    """PROVE weights from 'name=value,...' over the defaults; OptionError on a bad pair."""
    weights = dict(rewards.PROVE_WEIGHTS)
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in weights:
            raise OptionError(f"--weights: expected name=value with a name among {', '.join(weights)}, got {part!r}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise OptionError(f"--weights: {name} needs a number, got {value.strip()!r}") from None
    return weights


def reward_name(cfg: ScoreConfig, weights: dict[str, float]) -> str:
    """Which reward `reward` is: the name, plus the weights when they differ from the defaults."""
    if cfg.reward != "prove" or weights == rewards.PROVE_WEIGHTS:
        return cfg.reward
    return "prove(" + ",".join(f"{k}={v:g}" for k, v in weights.items() if v) + ")"


@dataclass
class TaskReference:
    """What scoring needs from a task, computed once per task: the executed reference, the
    tool schemas, the flattened reference calls and their dependency parents."""

    trace: ReferenceTrace
    tools: dict[str, dict]
    flat: list[dict]
    parents: list[set[int]]
    initial_hash: str = ""  # the state before any call (a rollout that ended before its first turn)


def dependency_parents(task: dict, n_ref: int) -> list[set[int]]:
    """Parents of each flattened reference call: the edges [i, j, kind] of the task's
    complexity profile (computed when the task carries none); without edges, the chain of
    `rewards.chain_parents`."""
    profile = task.get("profile") or compute_profile(task)
    edges = (profile or {}).get("edges")
    if edges is None:
        return rewards.chain_parents(n_ref)
    parents: list[set[int]] = [set() for _ in range(n_ref)]
    for src, dst, *_ in edges:
        if 0 <= src < dst < n_ref:
            parents[dst].add(src)
    return parents


def prepare_reference(task: dict) -> TaskReference:
    """Replay the task's reference and collect its tool schemas."""
    trace = replay_reference(task)
    if trace.failure is not None:  # every rollout would be compared with a broken environment's output
        raise InputError(f"the reference replay of task {task['id']!r} failed, so its rollouts cannot be scored: "
                         f"{trace.failure}", where=task["id"], field="reference")
    with open_episode(task) as episode:
        wanted = set(task.get("tools") or []) or None
        tools = {n: s for n, s in episode.tool_index().items() if wanted is None or n in wanted}
        initial_hash = episode.snapshot_hash()
    flat = [c for turn in task["reference"] for c in turn]
    return TaskReference(trace, tools, flat, dependency_parents(task, len(flat)), initial_hash)


def final_state_outcome(rollout: dict, ref: TaskReference) -> float:
    """1 when the episode's final state equals the reference's final state, whatever the
    calls' results and turns were: tau2-bench's database check (`outcome: final_state`)."""
    hashes = rollout["turn_state_hashes"]
    final = hashes[-1] if hashes else ref.initial_hash
    expected = ref.trace.state_hashes[-1] if ref.trace.state_hashes else ref.initial_hash
    return 1.0 if final == expected else 0.0


def score_rollout(rollout: dict, task: dict, ref: TaskReference, cfg: ScoreConfig, weights: dict[str, float]) -> dict:
    """One scored record: the rollout's fields plus every reward column."""
    n_turns = len(task["reference"])
    if rollout["n_user_turns"] != n_turns:
        raise InputError(
            f"rollout has {rollout['n_user_turns']} user turns but task {task['id']!r} has {n_turns}",
            where=rollout["rollout_id"], field="n_user_turns",
        )
    calls = rollout["calls"]
    scores = rewards.turn_scores(calls, task["reference"], ref.trace, rollout["turn_state_hashes"],
                                 rollout["n_turns_reached"], cfg.irrelevance)
    n_ref = len(ref.flat)
    matches = rewards.match_reference(ref.flat, calls, ref.parents)
    components = {
        "progress": rewards.progress_reward(scores),
        "outcome": final_state_outcome(rollout, ref) if task.get("outcome") == "final_state" else rewards.outcome_reward(scores),
        "validity": rewards.validity(calls, ref.tools, n_ref),
        "coverage": rewards.coverage(matches),
        "efficiency": rewards.efficiency_penalty(len(calls), n_ref, cfg.alpha, cfg.beta),
        "name_precision": rewards.name_precision(calls, ref.flat),
        "arg_accuracy": rewards.argument_accuracy(ref.flat, calls, matches),
        "format_penalty": rewards.format_penalty(calls),
    }
    prove = rewards.prove_reward(components, weights)
    chosen = {"progress": components["progress"], "outcome": components["outcome"], "prove": prove}[cfg.reward]
    return {
        **rollout,
        "skill": task["skill"],
        "origin": task["origin"],
        "domain": task["domain"],
        "reward": chosen,
        "reward_name": reward_name(cfg, weights),
        "turn_scores": scores,
        **components,
        "prove": prove,
        "n_ref_calls": n_ref,
    }


def merge_tasks(files: Mapping[str, list[dict]]) -> dict[str, dict]:
    """The tasks of several files by id (train and test together). One id in two files is
    allowed when both records are the same task; otherwise it is an InputError."""
    merged: dict[str, dict] = {}
    origin: dict[str, str] = {}
    for path, tasks in files.items():
        for line, task in enumerate(tasks, 1):
            known = merged.get(task["id"])
            if known is not None and known != task:
                raise InputError(f"task {task['id']!r} differs from the one in {origin[task['id']]}",
                                 where=f"{path}:{line}", field="id")
            merged[task["id"]], origin[task["id"]] = task, path
    return merged


def score(rollouts: Iterable[dict], tasks: Mapping[str, dict] | Iterable[dict], cfg: ScoreConfig | None = None) -> Iterator[dict]:
    """Score rollouts one by one (streaming). `tasks` maps task id -> task (or is a list)."""
    cfg = cfg or ScoreConfig()
    cfg.check()
    weights = parse_weights(cfg.weights)
    by_id = tasks if isinstance(tasks, Mapping) else {t["id"]: t for t in tasks}
    cache: dict[str, TaskReference] = {}
    for rollout in rollouts:
        task = by_id.get(rollout["task_id"])
        if task is None:
            raise InputError(f"task {rollout['task_id']!r} is not in the tasks file", where=rollout["rollout_id"], field="task_id")
        ref = cache.get(task["id"]) if cfg.cache else None
        if ref is None:
            ref = prepare_reference(task)
            if cfg.cache:
                cache[task["id"]] = ref
        yield score_rollout(rollout, task, ref, cfg, weights)


# ---------------------------------------------------------------------------------------
# scripted trajectories


def scripted_rollout(task: dict, turns: list[list[dict]], *, group_id: str | None = None,
                     sample_index: int = 0, policy_id: str = "scripted") -> dict:
    """A schema-valid rollout from scripted calls executed in a real episode of `task`.

    `turns[t]` lists the calls made during user turn t as {name, arguments}, or {raw} for a
    call the model wrote but that could not be parsed. Fewer turns than the task has means
    the episode stopped early (finish_reason max_steps). Results, errors and the per-turn
    state hashes are the real ones; token fields are one dummy token. Used to check the
    rewards on hand-built trajectories and to benchmark scoring.
    """
    group_id = group_id or f"{task['id']}@scripted"
    calls, messages, hashes = [], [], []
    with open_episode(task) as episode:
        for t, turn_calls in enumerate(turns):
            messages.append({"role": "user", "content": task["user_turns"][t]})
            offered = {tool_name(s) for s in offered_tools(task, episode, t)}
            for step, c in enumerate(turn_calls):
                if "name" not in c:
                    calls.append({"turn": t, "step": step, "name": None, "arguments": None,
                                  "raw": c.get("raw", ""), "result": None, "error": PARSE_ERROR})
                    continue
                outcome = episode.call(c["name"], c["arguments"], offered)
                calls.append({"turn": t, "step": step, "name": c["name"], "arguments": c["arguments"],
                              "raw": None, "result": outcome.result, "error": outcome.error})
                messages.append({"role": "tool", "name": c["name"], "content": outcome.result or ""})
            messages.append({"role": "assistant", "content": "done"})
            hashes.append(episode.snapshot_hash())
    n_turns = len(task["user_turns"])
    return {
        "rollout_id": f"{group_id}/{sample_index}",
        "task_id": task["id"],
        "group_id": group_id,
        "sample_index": sample_index,
        "policy_id": policy_id,
        "messages": messages,
        "calls": calls,
        "token_ids": [0],
        "logprobs": [0.0],
        "loss_mask": [0],
        "finish_reason": "done" if len(turns) >= n_turns else "max_steps",
        "n_user_turns": n_turns,
        "n_turns_reached": len(turns),
        "turn_state_hashes": hashes,
        "n_calls": len(calls),
    }


def reference_turns(task: dict) -> list[list[dict]]:
    """The task's reference calls as a script for `scripted_rollout` (copies)."""
    return [[{"name": c["name"], "arguments": dict(c["arguments"])} for c in turn] for turn in task["reference"]]

