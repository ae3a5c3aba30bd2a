"""rods' BFCL reward against BFCL's own checker, on perturbed ground-truth trajectories.

Each BFCL multi-turn task's ground truth is perturbed in many ways (a call dropped, moved to
another turn, an argument changed or retyped, an extra call, a turn emptied, a call made
in a turn that should have none, ...). Every trajectory is executed for real and scored
twice: by rods (`stages.score.score` on the rollout `scripted_rollout` records) and by
`bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker` on the same calls written as
BFCL's decoded call strings. The two verdicts are compared at task level (all turns pass)
and on the first failing turn.

The official checker `eval`s call strings: that happens here, in the tests, never in rods.
It is run as BFCL would run it alone in a fresh process for each trajectory: its model-side
and ground-truth-side simulators each get their own copies of the state BFCL keeps outside
instances (see rodscli.envs.isolation), since in one long process BFCL's own default
arguments and module data carry writes from one trajectory (and from the model side to the
ground-truth side) into the next.

Run as a script for the numbers of docs/bfcl-reward.md:
    python tests/bfcl_agreement.py [--per-task K] [--limit N] [--categories base,...] [--modes official,v3]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from rodscli.envs import bfcl
from rodscli.envs.isolation import Private
from rodscli.profile import compute_profile
from rodscli.stages.score import ScoreConfig, reference_turns, score, scripted_rollout

KINDS = (
    "reference", "drop_call", "move_call_later", "move_call_earlier", "change_argument",
    "retype_number", "number_as_string", "drop_argument", "extra_argument", "repeat_call",
    "unknown_tool", "empty_turn", "call_in_empty_turn", "swap_calls", "garbled_call",
    "early_withheld_call",
)


@cache
def raw_entries() -> dict[str, tuple[dict, list[list[str]]]]:
    """BFCL's own test entries and ground-truth strings, by BFCL id."""
    root = bfcl.data_dir()
    out = {}
    for category in bfcl.CATEGORIES:
        answers = {a["id"]: a["ground_truth"] for a in bfcl._jsonl(root / "possible_answer" / f"BFCL_v4_multi_turn_{category}.json")}
        for entry in bfcl._jsonl(root / f"BFCL_v4_multi_turn_{category}.json"):
            out[entry["id"]] = (entry, answers[entry["id"]])
    return out


# ---------------------------------------------------------------- perturbations


def _calls(turns: list[list[dict]]) -> list[tuple[int, int]]:
    return [(t, i) for t, calls in enumerate(turns) for i, c in enumerate(calls) if "name" in c]


def _changed(value, rng: random.Random):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + rng.choice([1, -1, 7])
    if isinstance(value, float):
        return value * 1.5 + 1
    if isinstance(value, str):
        return value + "x" if value else "x"
    if isinstance(value, list):
        return value[:-1] if value else ["x"]
    if isinstance(value, dict):
        return {**value, "x": 1}
    return "x"


def perturb(task: dict, kind: str, rng: random.Random) -> list[list[dict]] | None:
    """The task's reference calls perturbed one way, or None when the kind does not apply."""
    turns = reference_turns(task)
    where = _calls(turns)
    if kind == "reference":
        return turns
    if kind in ("drop_call", "move_call_later", "move_call_earlier", "repeat_call", "unknown_tool", "garbled_call"):
        if not where:
            return None
        t, i = rng.choice(where)
        if kind == "drop_call":
            del turns[t][i]
        elif kind == "move_call_later":
            if t + 1 >= len(turns):
                return None
            turns[t + 1].insert(0, turns[t].pop(i))
        elif kind == "move_call_earlier":
            if t == 0:
                return None
            turns[t - 1].append(turns[t].pop(i))
        elif kind == "repeat_call":
            turns[t].insert(i + 1, dict(turns[t][i]))
        elif kind == "unknown_tool":
            turns[t].insert(i, {"name": "no_such_tool", "arguments": {}})
        else:
            turns[t].insert(i, {"raw": "<tool_call>{not json"})
        return turns
    if kind in ("change_argument", "retype_number", "number_as_string", "drop_argument", "extra_argument"):
        options = []
        for t, i in where:
            for key, value in turns[t][i]["arguments"].items():
                numeric = isinstance(value, int | float) and not isinstance(value, bool)
                if kind in ("retype_number", "number_as_string") and not numeric:
                    continue
                options.append((t, i, key, value))
        if kind == "extra_argument":
            options = [(t, i, "extra", None) for t, i in where]
        if not options:
            return None
        t, i, key, value = rng.choice(options)
        args = turns[t][i]["arguments"]
        if kind == "change_argument":
            args[key] = _changed(value, rng)
        elif kind == "retype_number":
            args[key] = float(value) if isinstance(value, int) else (int(value) if value == int(value) else value + 0.5)
        elif kind == "number_as_string":
            args[key] = str(value)
        elif kind == "drop_argument":
            del args[key]
        else:
            args["extra"] = 1
        return turns
    if kind == "empty_turn":
        full = [t for t, calls in enumerate(turns) if calls]
        if not full:
            return None
        turns[rng.choice(full)] = []
        return turns
    if kind == "call_in_empty_turn":
        empty = [t for t, calls in enumerate(turns) if not calls]
        if not empty or not where:
            return None
        t = rng.choice(empty)
        later = [(u, i) for u, i in where if u > t] or where
        u, i = later[0]
        turns[t].append(dict(turns[u][i]))
        return turns
    if kind == "swap_calls":
        pairs = [t for t, calls in enumerate(turns) if len(calls) >= 2 and calls[0] != calls[1]]
        if not pairs:
            return None
        t = rng.choice(pairs)
        turns[t][0], turns[t][1] = turns[t][1], turns[t][0]
        return turns
    if kind == "early_withheld_call":
        if not task["withheld"]:
            return None
        w = task["withheld"][0]
        later = [(u, i) for u, i in where if turns[u][i]["name"] == w["tool"]]
        if not later or w["turn"] == 0:
            return None
        u, i = later[0]
        turns[w["turn"] - 1].append(dict(turns[u][i]))
        return turns
    raise ValueError(kind)


# ---------------------------------------------------------------- the two judges


@dataclass
class Verdict:
    passed: bool
    first_failing_turn: int | None


def rods_verdicts(task: dict, trajectories: list[list[list[dict]]], official: bool) -> list[Verdict]:
    """rods' verdicts: `score` over the trajectories' real rollouts (one reference replay)."""
    if "irrelevance" in ScoreConfig.__dataclass_fields__:
        cfg = ScoreConfig(irrelevance="official" if official else "v3")
    else:  # a rods from before the option (to measure it): v3 only
        cfg = ScoreConfig()
    rollouts = [scripted_rollout(task, turns, sample_index=i) for i, turns in enumerate(trajectories)]
    out = []
    for scored in score(rollouts, [task], cfg):
        failing = next((t for t, s in enumerate(scored["turn_scores"]) if not s), None)
        out.append(Verdict(failing is None, failing))
    return out


def call_string(call: dict) -> str:
    """A call as BFCL's decoded model output: name(key=python literal, ...)."""
    return f"{call['name']}({', '.join(f'{k}={v!r}' for k, v in call['arguments'].items())})"


_RUN = itertools.count()


def official_verdict(task: dict, turns: list[list[dict]], official: bool) -> Verdict:
    """BFCL's checker on the same trajectory (one step per call; unparseable calls are
    dropped, as BFCL's decoder drops them); with `official` False, BFCL v3's irrelevance
    rule is applied too (a call in a turn whose ground truth is empty fails that turn)."""
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_checker as checker
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    entry, ground_truth = raw_entries()[task["meta"]["bfcl_id"]]
    decoded = [[[call_string(c)] for c in calls if "name" in c] for calls in turns]
    model_name = f"rods_agreement_{next(_RUN)}"
    sides = {False: Private(), True: Private()}  # model side, ground-truth side
    turns_checked = []
    real = multi_turn_utils.execute_multi_turn_func_call

    def isolated(*args, **kwargs):
        ground_truth_side = kwargs["model_name"].endswith("_ground_truth")
        if ground_truth_side:
            turns_checked.append(len(turns_checked))
        private = sides[ground_truth_side]
        with contextlib.ExitStack() as stack:
            for name in kwargs["involved_classes"]:
                cls = bfcl.simulator_class(name)
                for method in ("__init__", "_load_scenario", *bfcl._class_param_order(name)):
                    stack.enter_context(private.calling(cls, method))
            return real(*args, **kwargs)

    checker.execute_multi_turn_func_call = isolated
    try:
        result = checker.multi_turn_checker(decoded, ground_truth, entry, entry["id"].rsplit("_", 1)[0], model_name)
    finally:
        checker.execute_multi_turn_func_call = real
        for key in [k for k in vars(multi_turn_utils) if k.startswith(model_name)]:
            del vars(multi_turn_utils)[key]
    failing = None if result["valid"] else turns_checked[-1]
    if not official:
        irrelevant = next((t for t, gt in enumerate(ground_truth) if not gt and decoded[t]), None)
        if irrelevant is not None and (failing is None or irrelevant < failing):
            failing = irrelevant
    return Verdict(failing is None, failing)


# ---------------------------------------------------------------- agreement


@dataclass
class Agreement:
    trajectories: int = 0
    task_level: int = 0  # same pass/fail
    first_turn: int = 0  # same first failing turn (None when both pass)
    disagreements: list | None = None

    def add(self, task_id: str, kind: str, ours: Verdict, theirs: Verdict) -> None:
        self.trajectories += 1
        self.task_level += ours.passed == theirs.passed
        self.first_turn += ours.first_failing_turn == theirs.first_failing_turn
        if ours != theirs:
            self.disagreements = (self.disagreements or []) + [(task_id, kind, ours, theirs)]

    def rates(self) -> tuple[float, float]:
        n = max(self.trajectories, 1)
        return self.task_level / n, self.first_turn / n


def trajectories(task: dict, per_task: int, seed: int = 0) -> list[tuple[str, list[list[dict]]]]:
    """(kind, turns) for up to `per_task` applicable perturbation kinds of one task (the
    reference always), the kinds chosen by a generator seeded by the task id."""
    rng = random.Random(f"{seed}:{task['id']}")
    kinds = list(KINDS[1:])
    rng.shuffle(kinds)
    out = []
    for kind in ("reference", *kinds):
        turns = perturb(task, kind, rng)
        if turns is not None:
            out.append((kind, turns))
        if len(out) >= per_task:
            break
    return out


def measure(tasks: list[dict], per_task: int, official: bool, seed: int = 0) -> Agreement:
    agreement = Agreement()
    for task in tasks:
        if task.get("profile") is None:  # computed once, not per scoring call
            task = {**task, "profile": compute_profile(task)}
        made = trajectories(task, per_task, seed)
        ours = rods_verdicts(task, [turns for _, turns in made], official)
        for (kind, turns), verdict in zip(made, ours, strict=True):
            agreement.add(task["id"], kind, verdict, official_verdict(task, turns, official))
    return agreement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-task", type=int, default=len(KINDS))
    parser.add_argument("--limit", type=int, default=0, help="first N tasks only (0: all 800)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--categories", default=",".join(bfcl.CATEGORIES))
    parser.add_argument("--modes", default="official,v3")
    args = parser.parse_args(argv)
    tasks = bfcl.load_tasks(args.categories.split(","))
    if args.limit:
        tasks = tasks[: args.limit]
    for official in [mode == "official" for mode in args.modes.split(",")]:
        start = time.perf_counter()
        a = measure(tasks, args.per_task, official, args.seed)
        task_rate, turn_rate = a.rates()
        mode = "official (--irrelevance official)" if official else "v3 (--irrelevance v3, default)"
        print(f"{mode}: {a.trajectories} trajectories of {len(tasks)} tasks, "
              f"task-level agreement {task_rate:.2%}, first-failing-turn agreement {turn_rate:.2%} "
              f"({time.perf_counter() - start:.0f}s)")
        kinds = Counter(kind for _, kind, _, _ in a.disagreements or [])
        for kind, n in kinds.most_common():
            example = next(d for d in a.disagreements if d[1] == kind)
            print(f"  {kind}: {n} (e.g. {example[0]}: rods {example[2]}, BFCL {example[3]})")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    raise SystemExit(main())
