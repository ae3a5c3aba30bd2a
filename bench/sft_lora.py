"""SFT tokens/s of `rods train-step`: full fine-tuning against a LoRA adapter, same run.

    .venv/bin/python bench/sft_lora.py --policy DIR        # e.g. SmolLM2 (docs/real-models.md)
    .venv/bin/python bench/sft_lora.py                     # the tiny policy (rods init-policy)

Both sides take the same SFT optimizer steps (stages/train.sft) on the same built-in tasks'
reference solutions, rendered with the checkpoint's chat template: all weights with AdamW,
then a rank-`--lora-r` adapter on every linear layer (peft), merged into the saved weights.
tokens/s = the tokens of the steps / the seconds train-step reports (model load and the
steps, not the checkpoint write). Prints one JSON line with both and the ratio LoRA / full,
and the same ratio over this process's CPU seconds (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rodscli.envs.builtin import seed_tasks
from rodscli.stages import train as T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", help="checkpoint directory (default: a fresh `rods init-policy`)")
    ap.add_argument("--tasks", type=int, default=2, help="built-in tasks whose reference solutions are trained on")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    args = ap.parse_args()
    every = max(1, 480 // args.tasks)
    tasks = [t for i, t in enumerate(seed_tasks()) if i % every == 0][: args.tasks]
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(args.policy) if args.policy else Path(tmp) / "tiny"
        if not args.policy:
            from rodscli.policy.tiny import init_policy

            init_policy(policy, seed=0)
        rendered = T.render_tasks(policy, tasks)
        runs = {}
        for name, lora_r in (("full", 0), ("lora", args.lora_r)):
            cfg = T.TrainOptions(mode="sft", epochs=1, batch_tokens=args.batch_tokens, lora_r=lora_r, schedule="constant")
            c = time.process_time()
            update = T.sft(policy, rendered, cfg, seed=0)
            update.save(Path(tmp) / name, validate=False)
            metrics = update.metrics
            runs[name] = {"tokens": metrics["tokens"], "seconds": round(metrics["time_s"], 2),
                          "tokens_per_s": round(metrics["tokens_per_s"], 1), "cpu_seconds": round(time.process_time() - c, 2),
                          "optimizer_steps": metrics["extra"]["optimizer_steps"]}
    full, lora = runs["full"], runs["lora"]
    print(json.dumps({
        "policy": args.policy or "tiny", "tasks": len(tasks), "lora_r": args.lora_r, **runs,
        "ratio": round(lora["tokens_per_s"] / full["tokens_per_s"], 2),
        # CPU seconds include the checkpoint write: the same ratio, less exposed to other load
        "ratio_cpu_time": round((lora["tokens"] / lora["cpu_seconds"]) / (full["tokens"] / full["cpu_seconds"]), 2),
    }))


if __name__ == "__main__":
    main()
