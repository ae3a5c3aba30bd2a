"""Benchmark `rods synthesize`: verified candidates per second, against a baseline in the same run.

For the built-in domains (100 seed tasks across both domains and the four skills) and for
BFCL (every fourth of the 400 training tasks; all 400 are known to the synthesizer, as the
buffer it mines literals and worlds from and checks near-duplicates against), 4 variants
per seed with the template writer:

- **rods synthesize**: the seed read as a plan over the API graph, grounded in a new world,
  executed, replay-checked, Phi-checked, near-duplicate-checked, user turns written.
- **baseline, generate-and-test without planning**: the same worlds, the same number of
  user turns and calls per turn as the seed, each call a tool of the task drawn at random
  with the arguments of one of its observed reference calls (the same API graph pool),
  executed, then the same filters (replay, Phi within tolerance of the seed, no
  near-duplicate). Given as many attempts as the synthesizer made.

A verified candidate is one that passed every filter. Rates are per CPU second of this
process (`time.process_time`), the fastest of --repeat runs: the machine is shared, and
wall-clock time would mostly measure the other processes. The built-in worlds are made
once per process (64 per domain and size), so the first run pays for them and the
fastest run does not. Target: >= 200 verified candidates/s (template writer).

    .venv/bin/python bench/synthesize.py [--seed-tasks 100] [--per-seed 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from rodscli.envs.base import offered_tools, open_episode, tool_name
from rodscli.envs.bfcl import BFCLTasksOptions, bfcl_tasks
from rodscli.envs.builtin import seed_tasks
from rodscli.profile import compute_profile, profile_distance
from rodscli.synth import DuplicateIndex, SynthesizeOptions, call_keys, synthesize
from rodscli.synth.filters import replays
from rodscli.synth.graph import ApiGraph
from rodscli.synth.worlds import WorldPool

sys.path.insert(0, str(Path(__file__).parent))
from envs import best_of  # noqa: E402  (bench/envs.py: the fastest of N runs in CPU seconds)


def baseline(seeds: list[dict], known: list[dict], attempts: int, opts: SynthesizeOptions) -> tuple[int, int]:
    """Generate-and-test without planning: random tools with observed arguments, same filters."""
    graph, worlds, dups = ApiGraph.mine(known), WorldPool(known), DuplicateIndex()
    for t in known:
        dups.add(call_keys(t))
    per_seed = max(1, attempts // max(1, len(seeds)))
    verified = tried = 0
    for seed in seeds:
        profile = seed.get("profile") or compute_profile(seed)
        shape = [len(turn) for turn in seed["reference"]]
        for a in range(per_seed):
            tried += 1
            rng = random.Random(f"baseline:{seed['id']}:{a}")
            world, _ = worlds.new_world(seed, rng, a, opts.seed)
            cand = {k: seed[k] for k in ("env", "domain", "skill", "env_config", "tools", "withheld") if k in seed}
            cand["initial_state"] = world
            reference, results, ok = [], [], True
            with open_episode(cand) as ep:
                for turn, n in enumerate(shape):
                    offered = sorted({tool_name(t) for t in offered_tools(cand, ep, turn)} & set(graph.calls))
                    calls = []
                    for _ in range(n):
                        name = rng.choice(offered)
                        args = dict(rng.choice(graph.calls[name]))
                        out = ep.call(name, args, set(offered))
                        if not out.ok or '"error"' in (out.result or "")[:200]:
                            ok = False
                            break
                        calls.append({"name": name, "arguments": args})
                        results.append(out.result or "")
                    if not ok:
                        break
                    reference.append(calls)
            if not ok:
                continue
            cand["reference"] = reference
            if not any(reference):
                continue
            passed, trace = replays(cand, results, None)
            if not passed:
                continue
            if profile_distance(compute_profile(cand, trace), profile) > opts.tolerance:
                continue
            keys = call_keys(cand)
            if dups.max_jaccard(keys) >= opts.max_jaccard:
                continue
            dups.add(keys)
            verified += 1
    return verified, tried



def measure(name: str, seeds: list[dict], known: list[dict], per_seed: int, repeat: int) -> None:
    opts = SynthesizeOptions(per_seed=per_seed)
    t_synth, (cands, stats) = best_of(repeat, lambda: synthesize(seeds, known, opts))
    t_base, (b_ok, b_tried) = best_of(repeat, lambda: baseline(seeds, known, stats["attempted"], opts))
    rate, b_rate = len(cands) / t_synth, b_ok / t_base
    print(f"{name}: {len(seeds)} seeds x {per_seed} variants")
    print(f"  rods synthesize: {stats['accepted']}/{stats['requested']} accepted "
          f"({stats['accepted'] / stats['requested']:.1%} of requested, {stats['attempted']} attempts, "
          f"rejected {stats['rejected']}) in {t_synth:.2f} CPU s = {rate:.1f} verified candidates/s "
          f"(target >= 200: {'met' if rate >= 200 else 'NOT met'})")
    causes = ", ".join(f"{cause} ({n})" for cause, n in list(stats["execution_failures"].items())[:3])
    print(f"  most frequent causes of failed executions: {causes or 'none'}")
    print(f"  baseline (generate-and-test, no planning): {b_ok}/{b_tried} verified in {t_base:.2f} CPU s "
          f"= {b_rate:.2f} verified candidates/s")
    ratio = rate / b_rate if b_rate else float("inf")
    print(f"  ratio: {ratio:.1f}x" if b_rate else "  ratio: baseline verified none (infinite)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed-tasks", "--seeds", dest="seed_tasks", type=int, default=100,
                    help="Seed tasks per workload (--seeds: the old name).")
    ap.add_argument("--per-seed", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="Runs of each; the fastest counts.")
    args = ap.parse_args()
    builtin = seed_tasks(per_skill=-(-args.seed_tasks // 8))
    measure("builtin", builtin[::max(1, len(builtin) // args.seed_tasks)][:args.seed_tasks], builtin, args.per_seed, args.repeat)
    train = bfcl_tasks(BFCLTasksOptions(split="train"))
    measure("bfcl", train[::max(1, len(train) // args.seed_tasks)][:args.seed_tasks], train, args.per_seed, args.repeat)


if __name__ == "__main__":
    main()
