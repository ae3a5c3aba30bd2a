"""Benchmark the teacher in synthesis against the template writer, in the same run.

Seeds: the first --builtin built-in seeds (per_skill 60 order: every domain and skill) and
--bfcl BFCL training seeds spread over the split, x --per-seed variants. The template
writer runs first (the baseline), then the same synthesis with `--teacher-checkpoint`
served by `transformers serve` on 127.0.0.1 (started here, so its CPU time is counted)
and all three agents. Printed and written to --out/summary.json:

- rewrite acceptance: the share of user turns whose teacher rewrite passed the
  programmatic gate (the rest keep the template's turn); the share of candidates the
  critique accepted, and the augmented copies that passed their gates and replay;
- distinct-bigram diversity (distinct-2: distinct word bigrams / all word bigrams) of the
  user turns written, template vs teacher: over everything each wrote, and over the same
  turns (the candidates the critique kept, before and after Rewrite; distinct-2 falls as
  the amount of text grows, so this is the like-for-like number);
- candidates per CPU second: candidates written / CPU seconds (this process, plus the
  server's user+system time for the teacher run), and the ratio to the template's.

    .venv/bin/python bench/teacher.py [--teacher-checkpoint CKPT --builtin 50 --bfcl 50 --per-seed 4]

A long run splits into shards that run at once, each with its own server (its own --port and
--out), and a merge that sums them: `--shard K/N` takes every N-th seed from the K-th of the
same seed list; `--merge OUT_1 ... OUT_N --out DIR` recomputes the summary over all shards'
candidates (counts and CPU seconds summed, wall = the longest shard's). A shard's
near-duplicate filter sees its own shard's candidates only, in both arms alike.

Without --teacher-checkpoint (as `make bench` runs it) the teacher is the tiny policy on
4 + 4 seeds x 1: a quick check that the machinery runs, not a measurement of a teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rodscli import records
from rodscli.envs.bfcl import BFCLTasksOptions, bfcl_tasks
from rodscli.envs.builtin import seed_tasks
from rodscli.stages.synthesize import SynthesizeOptions, synthesize
from rodscli.synth.teacher import TeacherOptions


def distinct_2(turns: list[str]) -> float:
    """Distinct word bigrams over all word bigrams of the turns (each turn on its own)."""
    grams = []
    for t in turns:
        words = re.findall(r"[a-z0-9']+", t.lower())
        grams += zip(words, words[1:], strict=False)
    return len(set(grams)) / len(grams) if grams else 0.0


def same_turns(plain: list[dict], taught: list[dict]) -> dict:
    """Distinct-2 of the template's and the teacher's user turns of the same candidates
    (not copies, not replacements of rejected candidates: those have no template twin)."""
    before = {t["id"]: t for t in plain}
    kept = [t for t in taught if not {"augment_of", "attempt"} & set(t["synthesis"].get("teacher", {}))]
    return {"turns": sum(len(t["user_turns"]) for t in kept),
            "template": round(distinct_2([u for t in kept for u in before[t["id"]]["user_turns"]]), 4),
            "teacher": round(distinct_2([u for t in kept for u in t["user_turns"]]), 4)}


def server_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its waited-for children (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def serve(args: argparse.Namespace, log: Path) -> subprocess.Popen:
    """Start the teacher's server on 127.0.0.1 and wait until it answers /v1/models."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if args.server == "llama-cpp":  # llama-cpp-python's OpenAI-compatible server, reading the GGUF file itself
        cmd = [args.server_python, "-m", "llama_cpp.server", "--model", args.teacher_checkpoint,
               "--model_alias", args.teacher_checkpoint, "--host", "127.0.0.1", "--port", str(args.port),
               "--n_ctx", "4096", "--n_threads", str(args.server_threads),
               "--n_threads_batch", str(args.server_threads), "--verbose", "false"]
    else:
        exe = Path(args.server_python).with_name("transformers")
        cmd = [str(exe), "serve", args.teacher_checkpoint, "--host", "127.0.0.1", "--port", str(args.port), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/v1/models", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"the {args.server} server did not come up: see {log}")


def teacher_run(t: dict, plain: list[dict], taught: list[dict], args: argparse.Namespace,
                cost: tuple[float, float, float]) -> dict:
    """The teacher run's numbers: acceptance by agent, diversity, cost (client and server CPU s, wall s)."""
    client_cpu, server_used, wall = cost
    rejected = t.get("critique_rejected", {})
    return {
        "rewrite_accepted": f"{t.get('rewritten_turns', 0)}/{t.get('turns', 0)}",
        "rewrite_share": round(t.get("rewritten_turns", 0) / max(1, t.get("turns", 0)), 4),
        "agents": args.agents, "critique_rejected": rejected,
        "critique_accepted": f"{t.get('critique_attempts', {}).get('judged', 0) - sum(rejected.values())}"
                             f"/{t.get('critique_attempts', {}).get('judged', 0)} judged",
        "critique_attempts": t.get("critique_attempts", {}),
        "augmented": t.get("augmented", 0), "augment_rejected": t.get("augment_rejected", {}),
        "candidates": len(taught), "requests": t["requests"],
        "distinct_2": round(distinct_2([u for c in taught for u in c["user_turns"]]), 4),
        # the same turns (the candidates the critique kept, before and after Rewrite):
        # distinct-2 falls as text grows, so only equal amounts of text compare
        "distinct_2_same_turns": same_turns(plain, taught),
        "distinct_2_rewritten_only": round(distinct_2(
            [u for c in taught if "augment_of" not in c["synthesis"]["teacher"]
             for u, ok in zip(c["user_turns"], c["synthesis"]["teacher"].get("rewritten", []), strict=False) if ok]), 4),
        "cpu_s": {"client": round(client_cpu, 2), "server": round(server_used, 2)}, "wall_s": round(wall, 1),
        "candidates_per_cpu_s": float(f"{len(taught) / (client_cpu + server_used):.3g}"),
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher-checkpoint", help="A local checkpoint for `transformers serve`, or a GGUF file with "
                    "--server llama-cpp (default: the tiny policy, made here: a quick run of the machinery, `make bench`)")
    ap.add_argument("--server", choices=["transformers", "llama-cpp"], default="transformers",
                    help="`transformers serve` (the serving extra) or llama-cpp-python's server (not a rods "
                         "dependency: --server-python names an interpreter that has it)")
    ap.add_argument("--server-python", default=sys.executable, help="The interpreter whose environment has the server")
    ap.add_argument("--server-threads", type=int, default=1,
                    help="llama-cpp: threads of the server, for the prompt and for generation")
    ap.add_argument("--builtin", type=int, default=4)
    ap.add_argument("--bfcl", type=int, default=4)
    ap.add_argument("--per-seed", type=int, default=1)
    ap.add_argument("--port", type=int, default=18431)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--agents", default="rewrite,critique,augment", help="As --teacher-agents.")
    ap.add_argument("--attempts", type=int, default=3, help="As --teacher-attempts.")
    ap.add_argument("--extra-body", help="As --teacher-extra-body (a JSON object of server-specific request fields).")
    ap.add_argument("--out", default="runs/bench-teacher")
    ap.add_argument("--shard", type=shard_spec, help="K/N: this run takes every N-th seed from the K-th (0-based)")
    ap.add_argument("--merge", nargs="+", metavar="SHARD_OUT", help="Sum finished shards' --out directories into --out")
    return ap.parse_args()


def shard_spec(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/4")
    return int(k), int(n)


SETTINGS = {"per_variant"}  # numbers in the teacher's stats that are settings, not counts


def summed(a: object, b: object, key: str = "") -> object:
    """Two shards' counts added (dicts key by key); settings and names must agree."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: summed(a[k], b[k], k) if k in a and k in b else a.get(k, b.get(k)) for k in {**a, **b}}
    if isinstance(a, int | float) and not isinstance(a, bool) and key not in SETTINGS:
        return a + b
    if a != b:
        raise SystemExit(f"the shards disagree on {key!r}: {a!r} vs {b!r}")
    return a


def summarize(args: argparse.Namespace, seeds: dict, plain: list[dict], taught: list[dict], template_cpu: float,
              stats: dict, cost: tuple[float, float, float]) -> dict:
    summary = {
        "seeds": seeds, "per_seed": args.per_seed,
        "teacher": args.teacher_checkpoint, "server": args.server, "max_tokens": args.max_tokens,
        "extra_body": args.extra_body,
        "template": {"candidates": len(plain), "cpu_s": round(template_cpu, 2),
                     "distinct_2": round(distinct_2([u for c in plain for u in c["user_turns"]]), 4),
                     "candidates_per_cpu_s": round(len(plain) / template_cpu, 3)},
        "teacher_run": teacher_run(stats, plain, taught, args, cost),
    }
    ratio = summary["teacher_run"]["candidates_per_cpu_s"] / summary["template"]["candidates_per_cpu_s"]
    summary["ratio_candidates_per_cpu_s"] = float(f"{ratio:.3g}")
    return summary


def merge(args: argparse.Namespace) -> dict:
    """The summary over finished shards: their candidates concatenated, their counts and CPU summed."""
    plain, taught, parts = [], [], []
    for d in map(Path, args.merge):
        if not (d / "shard.json").exists():
            raise SystemExit(f"{d}: no shard.json (not a finished `--shard` run)")
        parts.append(json.loads((d / "shard.json").read_text()))
        plain += list(records.read_records(d / "template.jsonl", "task"))
        taught += list(records.read_records(d / "teacher.jsonl", "task"))
    first = parts[0]["args"]
    for k, v in first.items():
        if any(p["args"][k] != v for p in parts):
            raise SystemExit(f"the shards were run with different {k}")
        setattr(args, "teacher_checkpoint" if k == "teacher" else k, v)
    stats, seeds = parts[0]["stats"], parts[0]["seeds"]
    for p in parts[1:]:
        stats, seeds = summed(stats, p["stats"]), summed(seeds, p["seeds"])
    cost = (sum(p["client_cpu"] for p in parts), sum(p["server_cpu"] for p in parts), max(p["wall"] for p in parts))
    summary = summarize(args, seeds, plain, taught, sum(p["template_cpu"] for p in parts), stats, cost)
    summary["shards"] = len(parts)
    return summary


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:  # the shards' own files only: no server, no seeds
        summary = merge(args)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary, indent=2))
        return
    if args.teacher_checkpoint is None:
        from rodscli.policy.tiny import init_policy

        args.teacher_checkpoint = str(out / "tiny")
        init_policy(args.teacher_checkpoint)
        args.max_tokens = min(args.max_tokens, 16)

    builtin = seed_tasks(per_skill=60)
    train = list(bfcl_tasks(BFCLTasksOptions(split="train")))
    train_seeds = train[::max(1, len(train) // args.bfcl)][:args.bfcl] if args.bfcl else []
    seeds = (builtin[::max(1, len(builtin) // args.builtin)][:args.builtin] if args.builtin else []) + train_seeds
    bfcl_ids = {t["id"] for t in train_seeds}
    if args.shard:
        seeds = seeds[args.shard[0]::args.shard[1]]
    known = builtin + train  # the API graph's literals and the near-duplicate index, as in the loop
    opts = SynthesizeOptions(per_seed=args.per_seed)

    start = time.process_time()
    plain, _ = synthesize(seeds, known, opts)
    plain_cpu = time.process_time() - start
    records.write_records(out / "template.jsonl", plain, "task")

    proc = serve(args, out / "serve.log")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: still stop the server (finally)
    try:
        teacher = TeacherOptions(url=f"http://127.0.0.1:{args.port}/v1", model=args.teacher_checkpoint,
                                 concurrency=args.concurrency, max_tokens=args.max_tokens, agents=args.agents,
                                 attempts=args.attempts, extra_body=args.extra_body)
        server_before, start, wall = server_cpu(proc.pid), time.process_time(), time.monotonic()
        taught, stats = synthesize(seeds, known, opts, teacher=teacher)
        client_cpu, server_used = time.process_time() - start, server_cpu(proc.pid) - server_before
        wall = time.monotonic() - wall
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    records.write_records(out / "teacher.jsonl", taught, "task", provenance_info={"synthesis": stats})

    n_bfcl = sum(t["id"] in bfcl_ids for t in seeds)
    seed_counts = {"builtin": len(seeds) - n_bfcl, "bfcl": n_bfcl}
    if args.shard:  # what --merge needs to sum this shard with the others
        (out / "shard.json").write_text(json.dumps({
            "shard": list(args.shard), "seeds": seed_counts,
            "stats": {k: v for k, v in stats["teacher"].items() if k != "url"},  # each shard has its own port
            "template_cpu": plain_cpu,
            "client_cpu": client_cpu, "server_cpu": server_used, "wall": wall,
            "args": {"per_seed": args.per_seed, "teacher": args.teacher_checkpoint, "server": args.server,
                     "max_tokens": args.max_tokens, "extra_body": args.extra_body, "agents": args.agents,
                     "attempts": args.attempts}}, indent=2) + "\n")
    summary = summarize(args, seed_counts, plain, taught, plain_cpu, stats["teacher"], (client_cpu, server_used, wall))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
