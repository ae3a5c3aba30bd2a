"""Benchmark the replay of tau2-bench's airline tasks (`rods tasks tau2`) with copy-on-write
state against the same replay with copy-on-write turned off, in the same run.

With copy-on-write (the default), the airline database (4 MB, 2,800 records) is loaded
once per process; an episode reads through `CowDict`s and copies only the records it
reads, and the state hash after a turn re-hashes only those (a Merkle digest over the
template's hashes, computed once). Baseline (`copy_on_write.ENABLED = False`): every
episode deep-copies the loaded database and the state hash dumps and hashes all of it,
which is what the adapter does with any other value.

Reported: the one-time cost (database load and template digests), the replay of all 50
tasks twice (what `rods tasks replay` does), and per task, both ways, on --baseline-tasks
tasks (the baseline takes about 2 s a task). Wall-clock seconds (the database work is not
microseconds, and the tau2 calls are the same both ways).

    OMP_NUM_THREADS=1 .venv/bin/python bench/tau2_replay.py [--baseline-tasks 6]
"""

from __future__ import annotations

import argparse
import time

from rodscli.envs import copy_on_write
from rodscli.stages.tasks import replay_tasks
from rodscli.stages.tau2 import Tau2TasksOptions, tau2_tasks


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-tasks", type=int, default=6, help="tasks replayed the baseline way (about 2 s each)")
    args = parser.parse_args()
    from loguru import logger

    logger.remove()  # tau2 logs every call at DEBUG
    t_make, made = timed(lambda: tau2_tasks(Tau2TasksOptions(domain="airline", profile=False)))
    tasks = made.tasks
    n_calls = sum(len(t["reference"][0]) for t in tasks)
    print(f"{len(tasks)} airline tasks, {n_calls} gold calls (made in {t_make:.1f} s, database loaded once)")

    t_first, report = timed(lambda: replay_tasks(tasks[:1]))
    assert report.ok
    print(f"first replay, template digests included: {t_first:.2f} s")
    t_all, report = timed(lambda: replay_tasks(tasks))
    assert report.ok, report.failures[:3]
    print(f"copy-on-write: 50 tasks replayed twice in {t_all:.2f} s ({2 * n_calls / t_all:.0f} calls/s; target < 5 s)")

    some = tasks[: args.baseline_tasks]
    t_cow, cow = timed(lambda: replay_tasks(some))
    copy_on_write.ENABLED = False
    try:
        t_base, base = timed(lambda: replay_tasks(some))
    finally:
        copy_on_write.ENABLED = True
    assert cow.ok and base.ok
    per_cow, per_base = t_cow / len(some), t_base / len(some)
    print(f"per task (replayed twice), first {len(some)} tasks: copy-on-write {per_cow:.3f} s, "
          f"deep copy + full hash {per_base:.3f} s: {per_base / per_cow:.0f}x faster")
    print(f"estimated 50-task replay the baseline way: {per_base * len(tasks):.0f} s")


if __name__ == "__main__":
    main()
