"""Whether two checkouts of rods synthesize the same candidates: the md5 of every candidate
(and of the whole candidate list and the stats), for the built-in domains (100 seed tasks)
and BFCL (every fourth of the 400 training tasks), 4 variants per seed, template writer.

Run it once per checkout (PYTHONPATH picks the code) and compare the printed digests:

    PYTHONPATH=/tmp/i17-base/src .venv/bin/python bench/synthesize_identical.py > base.txt
    PYTHONPATH=src .venv/bin/python bench/synthesize_identical.py > mine.txt
    diff base.txt mine.txt && echo identical

(`git archive main | tar -x -C /tmp/i17-base` makes the other checkout.) With --repeat N it
also prints the fastest CPU time of N runs (lines starting with #, not to compare): run
the two checkouts alternately a few times to compare their speed on a shared machine. Works with the
code before and after the synthesizer became the `rodscli.synth` package.
"""

from __future__ import annotations

import argparse
import hashlib
import time

import orjson

from rodscli.envs.bfcl import BFCLTasksOptions, bfcl_tasks
from rodscli.envs.builtin import seed_tasks

try:
    from rodscli.synth import SynthesizeOptions, synthesize
except ImportError:  # the checkout before the split
    from rodscli.stages.synthesize import SynthesizeOptions, synthesize  # type: ignore[no-redef]


def digest(value: object) -> str:
    return hashlib.md5(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def report(name: str, seeds: list[dict], known: list[dict], per_seed: int, verbose: bool, repeat: int) -> None:
    took = float("inf")
    for _ in range(repeat):  # the fastest run counts (the first one also makes the built-in worlds)
        start = time.process_time()
        cands, stats = synthesize(seeds, known, SynthesizeOptions(per_seed=per_seed))
        took = min(took, time.process_time() - start)
    print(f"{name}: {len(seeds)} seeds x {per_seed}: {len(cands)} candidates, all {digest(cands)}, "
          f"stats {digest(stats)}")
    if verbose:
        for c in cands:
            print(f"  {c['id']} {digest(c)}")
    print(f"# {name}: {took:.2f} CPU s, the fastest of {repeat}")  # not compared (timing)


def workloads(n: int) -> list[tuple[str, list[dict], list[dict]]]:
    """(name, seeds, known tasks): the seed sets bench/synthesize.py measures."""
    builtin = seed_tasks(per_skill=-(-n // 8))
    train = bfcl_tasks(BFCLTasksOptions(split="train"))
    return [(name, tasks[::max(1, len(tasks) // n)][:n], tasks) for name, tasks in (("builtin", builtin), ("bfcl", train))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed-tasks", "--seeds", dest="seed_tasks", type=int, default=100,
                    help="Seed tasks per workload (--seeds: the old name).")
    ap.add_argument("--per-seed", type=int, default=4)
    ap.add_argument("--each", action="store_true", help="Also print every candidate's md5.")
    ap.add_argument("--repeat", type=int, default=1, help="Runs of each; the fastest CPU time is printed.")
    args = ap.parse_args()
    for name, seeds, known in workloads(args.seed_tasks):
        report(name, seeds, known, args.per_seed, args.each, args.repeat)


if __name__ == "__main__":
    main()
