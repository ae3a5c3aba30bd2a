"""Benchmark records IO: read + validate throughput of rollout records, JSONL and Parquet,
against plain `json` + per-record `jsonschema` validation measured in the same run.

rods reads every record of the file through `records.read_records(path, "rollout")`
(streaming in batches, schema-validated: per record for JSONL, per batch of columns for
Parquet). The baseline is what one writes without rods: `json.loads` per line and a
`jsonschema.Draft202012Validator` (compiled once) validating each record. The baseline is
slow, so it reads the first --baseline-records lines of the same JSONL file and its rate
(records/s) is compared. Target: Parquet at least 10x the baseline.

    .venv/bin/python bench/io.py [--records 1000000] [--tokens 64] [--baseline-records 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from itertools import islice
from pathlib import Path

import jsonschema

from rodscli import records, schemas


def rollout(i: int, n_tokens: int) -> dict:
    """A rollout-shaped record: a two-turn conversation, two tool calls, token arrays."""
    mask = [int(k % 3 != 0) for k in range(n_tokens)]
    return {
        "rollout_id": f"task-{i // 8:06d}@3/{i % 8}", "task_id": f"task-{i // 8:06d}", "group_id": f"task-{i // 8:06d}@3",
        "sample_index": i % 8, "policy_id": "tiny-0003", "backend": "hf", "iteration": 3, "seed": i,
        "messages": [
            {"role": "user", "content": "Move report.txt into the archive folder."},
            {"role": "assistant", "content": "", "tool_calls": [{"name": "mv", "arguments": {"source": "report.txt", "destination": "archive"}}]},
            {"role": "tool", "name": "mv", "content": "{\"result\": \"moved\"}"},
            {"role": "assistant", "content": "Done."},
        ],
        "calls": [
            {"turn": 0, "step": 0, "name": "mv", "arguments": {"source": "report.txt", "destination": "archive"},
             "raw": None, "result": "{\"result\": \"moved\"}", "error": None},
            {"turn": 0, "step": 1, "name": None, "arguments": None, "raw": "<tool_call>{ls", "result": None,
             "error": "parse_error"},
        ],
        "token_ids": [(i + k) % 50000 for k in range(n_tokens)],
        "logprobs": [-0.25 * m for m in mask],
        "loss_mask": mask,
        "finish_reason": "done", "n_user_turns": 1, "n_turns_reached": 1,
        "turn_state_hashes": [f"{i:016x}"], "n_calls": 2, "n_model_tokens": sum(mask),
    }


def timed(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--tokens", type=int, default=64, help="token ids (and logprobs, mask) per record")
    ap.add_argument("--baseline-records", type=int, default=20_000)
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temporary folder)")
    args = ap.parse_args()

    schema = schemas.load("rollout")
    assert schemas.problems("rollout", rollout(0, args.tokens)) == []
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        jsonl, parquet = Path(d) / "rollouts.jsonl", Path(d) / "rollouts.parquet"
        t_write_jsonl, _ = timed(lambda: records.write_records(
            jsonl, (rollout(i, args.tokens) for i in range(args.records)), "rollout"))
        t_write_parquet, _ = timed(lambda: records.write_records(
            parquet, records.read_records(jsonl, "rollout", validate=False), "rollout", validate=False))
        mb = {p.suffix: os.path.getsize(p) / 2**20 for p in (jsonl, parquet)}
        print(f"{args.records:,} rollout records, {args.tokens} tokens each: "
              f"JSONL {mb['.jsonl']:.0f} MiB (written validated in {t_write_jsonl:.1f} s), "
              f"Parquet {mb['.parquet']:.0f} MiB (converted in {t_write_parquet:.1f} s)")

        def baseline() -> int:
            validator = jsonschema.Draft202012Validator(schema)
            n = 0
            with open(jsonl, encoding="utf-8") as fh:
                for line in islice(fh, args.baseline_records):
                    validator.validate(json.loads(line))
                    n += 1
            return n

        def rods(path: Path, validate: bool = True):
            return lambda: sum(1 for _ in records.read_records(path, "rollout", validate))

        t_base, n_base = timed(baseline)
        base_rate = n_base / t_base
        print(f"  json + jsonschema per record   {base_rate:12,.0f} records/s   (first {n_base:,} records, {t_base:.1f} s)")
        rates = {}
        for label, path, validate in (("rods JSONL", jsonl, True), ("rods Parquet", parquet, True),
                                      ("rods JSONL --no-validate", jsonl, False),
                                      ("rods Parquet --no-validate", parquet, False)):
            t, n = timed(rods(path, validate))
            assert n == args.records
            rates[label] = n / t
            print(f"  {label:<30} {n / t:12,.0f} records/s   {n / t / base_rate:6.1f}x   ({n:,} records, {t:.1f} s)")
        ok = rates["rods Parquet"] / base_rate >= 10
        print(f"  target (Parquet read + validate >= 10x the baseline): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
