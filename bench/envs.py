"""Benchmark the environments against baselines measured in the same run.

1. BFCL reference replay: all 800 multi-turn tasks, each in a fresh episode of BFCL's own
   simulators, with a per-turn state check (snapshot + hash). Target: under 20 s.
   Baseline: the same replay checked the way BFCL's checker does it, a `copy.deepcopy` of
   the simulator instances after every turn, compared attribute by attribute with `==`
   against a second replay's copies.
2. Built-in domain calls/s: every reference call of the 480 seed tasks through
   `Episode.call` (tool lookup, argument check, dispatch, result JSON), each task on a
   fresh episode made off the clock. Target: >= 50,000.
   Baseline: the same methods called directly (no checks, no result text), to show what
   the safety layer costs.
3. Snapshot + compare per turn, built-in and BFCL: `Episode.snapshot_hash()` and one hash
   comparison, against `copy.deepcopy` of the public state + `==`.

Times are CPU seconds of this process (`time.process_time`), the fastest of --repeat
runs: the machine is shared, and wall-clock time of microsecond calls mostly measures the
other processes.

    .venv/bin/python bench/envs.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import copy
import time

from rodscli.envs.base import open_episode, replay_reference
from rodscli.envs.bfcl import load_tasks
from rodscli.envs.builtin import seed_tasks


def best_of(repeat: int, fn):
    """The fastest of `repeat` runs (seconds) and the last run's value."""
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.process_time()
        value = fn()
        best = min(best, time.process_time() - start)
    return best, value


# ---------------------------------------------------------------- 1. BFCL replay


def replay_all(tasks: list[dict]) -> list[list[str]]:
    out = []
    for t in tasks:
        trace = replay_reference(t)
        assert trace.ok, t["id"]
        out.append(trace.state_hashes)
    return out


def deepcopy_replay_all(tasks: list[dict]) -> list[list[dict]]:
    """Baseline: per turn, a deep copy of every simulator instance's public attributes."""
    out = []
    for t in tasks:
        states = []
        with open_episode(t) as ep:
            for calls in t["reference"]:
                for c in calls:
                    ep.call(c["name"], c["arguments"])
                states.append(copy.deepcopy({n: {k: v for k, v in vars(o).items() if not k.startswith("_")}
                                             for n, o in ep.instances.items()}))
        out.append(states)
    return out


def bench_bfcl(repeat: int) -> None:
    tasks = load_tasks()
    n_calls = sum(len(c) for t in tasks for c in t["reference"])
    n_turns = sum(len(t["reference"]) for t in tasks)
    fast, hashes = best_of(repeat, lambda: replay_all(tasks))
    again = replay_all(tasks)
    fast += best_of(repeat, lambda: again == hashes)[0]  # the check against a second replay
    assert again == hashes, "a second replay gave other states"
    slow, states = best_of(repeat, lambda: deepcopy_replay_all(tasks))
    other = deepcopy_replay_all(tasks)
    slow += best_of(repeat, lambda: other == states)[0]  # attribute by attribute, with BFCL's own __eq__
    assert other == states
    print(f"BFCL replay, {len(tasks)} tasks, {n_turns} turns, {n_calls} calls, per-turn state check:")
    print(f"  rods (snapshot + hash)     {fast:7.2f} s   {n_calls / fast:9,.0f} calls/s   target < 20 s: "
          f"{'ok' if fast < 20 else 'MISSED'}")
    print(f"  baseline (deepcopy + ==)   {slow:7.2f} s   {n_calls / slow:9,.0f} calls/s   "
          f"rods is {slow / fast:4.2f}x faster")


# ---------------------------------------------------------------- 2. built-in calls/s


def calls_seconds(tasks: list[dict], direct: bool) -> tuple[float, int]:
    """Seconds spent in the reference calls alone, each task on a fresh episode made off the clock."""
    total, n = 0.0, 0
    for t in tasks:
        ep = open_episode(t)
        calls = [c for turn in t["reference"] for c in turn]
        if direct:
            methods = ep._methods
            start = time.process_time()
            for c in calls:
                methods[c["name"]](**c["arguments"])
        else:
            start = time.process_time()
            for c in calls:
                ep.call(c["name"], c["arguments"])
        total += time.process_time() - start
        n += len(calls)
    return total, n


def bench_builtin_calls(tasks: list[dict], repeat: int) -> None:
    checked = direct = float("inf")
    for _ in range(repeat):  # interleaved, so that both see the same machine load
        secs, n = calls_seconds(tasks, direct=False)
        checked = min(checked, secs)
        direct = min(direct, calls_seconds(tasks, direct=True)[0])
    rate = n / checked
    print(f"built-in calls, {len(tasks)} seed tasks, {n} reference calls per run:")
    print(f"  Episode.call               {rate:12,.0f} calls/s ({checked * 1e6 / n:5.2f} us/call)   "
          f"target >= 50,000: {'ok' if rate >= 50_000 else 'MISSED'}")
    print(f"  baseline: direct method    {n / direct:12,.0f} calls/s ({direct * 1e6 / n:5.2f} us/call)   "
          f"the checks cost {checked / direct:4.2f}x")
    episodes_s, _ = best_of(repeat, lambda: [replay_reference(t) for t in tasks])
    print(f"  whole episodes (reset, calls, per-turn snapshot+hash): {len(tasks) / episodes_s:,.0f} episodes/s, "
          f"{n / episodes_s:,.0f} calls/s")


# ---------------------------------------------------------------- 3. snapshot + compare


def snapshot_cost(tasks: list[dict], label: str, repeat: int) -> None:
    episodes = [open_episode(t) for t in tasks]

    def rods() -> list[bool]:
        return [ep.snapshot_hash() == ep.snapshot_hash() for ep in episodes]

    def baseline() -> list[bool]:
        def public(ep):
            return copy.deepcopy({n: {k: v for k, v in vars(o).items() if not k.startswith("_")}
                                  for n, o in ep.instances.items()})
        return [public(ep) == public(ep) for ep in episodes]

    fast, same = best_of(repeat, rods)
    slow, same_b = best_of(repeat, baseline)
    assert all(same) and all(same_b)
    per = fast / len(episodes) / 2 * 1e6
    per_b = slow / len(episodes) / 2 * 1e6
    print(f"  {label:8s} snapshot+hash+compare {per:8.1f} us/turn   baseline deepcopy+== {per_b:8.1f} us/turn   "
          f"rods is {per_b / per:4.2f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (the fastest counts)")
    args = parser.parse_args()
    builtin = seed_tasks()
    bench_bfcl(args.repeat)
    bench_builtin_calls(builtin, args.repeat)
    print("snapshot + compare per turn (state of a task's initial episode):")
    snapshot_cost(builtin, "builtin", args.repeat)
    snapshot_cost(load_tasks(), "bfcl", args.repeat)


if __name__ == "__main__":
    main()
