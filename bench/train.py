"""Training throughput of `rods train-step` against TRL's GRPO loss on the same batch, same run.

    .venv/bin/python bench/train.py                      # CPU, the tiny policy (rods init-policy)
    .venv/bin/python bench/train.py --model qwen-0.5b    # CUDA: bf16 autocast, random Qwen2-shaped 0.5B, MFU
    .venv/bin/python bench/train.py --model qwen-0.5b --shard full   # the rods side wrapped in FSDP2 (one GPU)
    .venv/bin/python bench/train.py --bytes-ranks 2      # per-process parameter + AdamW bytes: 2 sharded ranks vs 1

`--bytes-ranks N` runs the real `rods train-step` on the bench batch twice, alone (--shard none)
and under `torchrun --nproc-per-node N --shard full`, and prints the parameter and AdamW-state
bytes the busiest process held, counted from the tensors' local shards (train-step's metrics
record them), with the ratio sharded / alone (2 ranks: at most 0.55 is the target).

One optimizer step = forward + backward over every sequence of a GRPO batch, gradient clipping
and an AdamW step. Both sides train an identical copy of the model with the same optimizer;
only the loss computation differs:

- rods: stages/train.accumulate (token-budget micro-batches sorted by length, log-probs through
  the LM head at the loss tokens only, one weight per sequence over the whole step);
- TRL: GRPOTrainer.compute_loss itself (a real GRPOTrainer built on the local model with a
  dummy reward function, loss_type="bnpo" = token mean, the same clip 0.2 / 0.28, beta 0),
  fed TRL's own batch layout: left-padded prompt + right-padded completion in chunks of
  per_device_train_batch_size, tool outputs masked with tool_mask.

The batch is multi-turn shaped (prompt, reply, tool output, reply, ...); tokens/s counts the
real (unpadded) tokens of the batch per optimizer step. Before timing, both losses are
computed on the whole batch as one micro-batch and must agree (same math, same model).
Prints one JSON line with both throughputs and the ratio rods / TRL (>= 1 is the target).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from rodscli import grpo
from rodscli.stages import train as T

# bf16 dense peak (no sparsity) per device, for model FLOPs utilization
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def qwen_config(vocab: int):
    """A Qwen2.5-0.5B-shaped config (random init: no weights are downloaded)."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                       rope_theta=1e6, tie_word_embeddings=True)


def make_policy(args, workdir: Path) -> Path:
    if args.policy:
        return Path(args.policy)
    from rodscli.policy.tiny import init_policy

    out = workdir / "tiny"
    init_policy(out, seed=0)
    if args.model == "qwen-0.5b":
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(qwen_config(args.vocab)).save_pretrained(out)  # keeps the tiny tokenizer
    return out


def make_batch(n_groups: int, group_size: int, turns: int, vocab: int, seed: int, lengths: tuple[int, int, int]) -> list[dict]:
    """Scored-shaped episodes: prompt, then `turns` x (reply, tool output); rewards vary within groups."""
    rng = random.Random(seed)
    prompt, reply, tool = lengths
    out = []
    for g in range(n_groups):
        for k in range(group_size):
            parts = [(0, rng.randint(prompt // 2, prompt))]
            for _ in range(turns):
                parts += [(1, rng.randint(reply // 4, reply)), (0, rng.randint(tool // 4, tool))]
            parts.append((1, rng.randint(reply // 4, reply)))
            mask = [m for m, n in parts for _ in range(n)]
            ids = [rng.randrange(3, vocab) for _ in mask]
            out.append({"rollout_id": f"g{g}/{k}", "group_id": f"g{g}", "token_ids": ids, "loss_mask": mask,
                        "logprobs": [rng.uniform(-8.0, -6.0) if m else 0.0 for m in mask], "reward": float(rng.random() < 0.5 + 0.1 * k) + 0.1 * k})
    return out


def trl_batches(seqs: list[T.Sequence], chunk: int, pad: int, device) -> list[dict]:
    """TRL's layout: prompt = tokens before the first model token (left-padded), completion = the rest."""
    out = []
    for i in range(0, len(seqs), chunk):
        part = seqs[i:i + chunk]
        starts = [s.loss_mask.index(1) for s in part]
        p_len = max(starts)
        c_len = max(len(s.token_ids) - st for s, st in zip(part, starts, strict=True))
        b = len(part)
        prompt_ids = torch.full((b, p_len), pad, dtype=torch.long)
        prompt_mask = torch.zeros(b, p_len, dtype=torch.long)
        completion_ids = torch.full((b, c_len), pad, dtype=torch.long)
        completion_mask = torch.zeros(b, c_len, dtype=torch.long)
        tool_mask = torch.zeros(b, c_len, dtype=torch.long)
        old = torch.zeros(b, c_len)
        for r, (s, st) in enumerate(zip(part, starts, strict=True)):
            prompt_ids[r, p_len - st:] = torch.tensor(s.token_ids[:st])
            prompt_mask[r, p_len - st:] = 1
            n = len(s.token_ids) - st
            completion_ids[r, :n] = torch.tensor(s.token_ids[st:])
            completion_mask[r, :n] = 1
            tool_mask[r, :n] = torch.tensor(s.loss_mask[st:])
            old[r, :n] = torch.tensor(s.old_logprobs[st:])
        batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
                 "completion_mask": completion_mask, "tool_mask": tool_mask, "old_per_token_logps": old,
                 "advantages": torch.tensor([s.advantage for s in part])}
        out.append({k: v.to(device) for k, v in batch.items()})
    return out


def trl_trainer(model, policy: Path, cfg: T.TrainOptions, chunk: int, workdir: Path, bf16: bool):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=str(workdir / "trl"), report_to="none", loss_type="bnpo", beta=0.0,
                      epsilon=cfg.eps_low, epsilon_high=cfg.eps_high, per_device_train_batch_size=chunk,
                      num_generations=chunk, gradient_accumulation_steps=1, bf16=bf16, use_cpu=not torch.cuda.is_available(),
                      logging_strategy="no", save_strategy="no", disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_dict({"prompt": ["x"] * chunk}),
                          processing_class=AutoTokenizer.from_pretrained(str(policy)))
    trainer.model.train()
    return trainer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("tiny", "qwen-0.5b"), default="tiny", help="tiny: rods init-policy; qwen-0.5b: random Qwen2-shaped 0.5B (CUDA)")
    ap.add_argument("--policy", help="use this checkpoint instead of making one")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--turns", type=int, default=3, help="reply + tool output pairs per episode")
    ap.add_argument("--lengths", default="384,96,192", help="max prompt, reply, tool-output tokens")
    ap.add_argument("--micro-batch-tokens", type=int, default=4096, help="rods token budget per micro-batch")
    ap.add_argument("--trl-chunk", type=int, default=4, help="TRL per_device_train_batch_size (sequences per micro-batch)")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per side (after one warm-up)")
    ap.add_argument("--vocab", type=int, default=151936, help="vocabulary of the qwen-0.5b config")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--shard", choices=("none", "full"), default="none", help="full: wrap the rods side in FSDP2 (a one-process group)")
    ap.add_argument("--bytes-ranks", type=int, default=0, help="instead of timing: per-process bytes with N sharded ranks vs 1 process")
    args = ap.parse_args(argv)
    if args.bytes_ranks:
        return bytes_per_rank(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        policy = make_policy(args, workdir)
        cfg = T.TrainOptions(lr=1e-6, micro_batch_tokens=args.micro_batch_tokens, bf16=bf16)
        load = lambda: AutoModelForCausalLM.from_pretrained(str(policy), dtype=torch.float32).to(device)  # noqa: E731
        model_rods, model_trl = load(), load()
        vocab = model_rods.config.vocab_size
        scored = make_batch(args.groups, args.group_size, args.turns, vocab, 0, tuple(int(x) for x in args.lengths.split(",")))
        seqs, stats = T.sequences_from_scored(scored, cfg)
        tokens = sum(len(s.token_ids) for s in seqs)
        n_params = sum(p.numel() for p in model_rods.parameters())

        # TRL's trainer first: it sets up accelerate's process state (bf16 on CUDA), which rods reuses
        trainer = trl_trainer(model_trl, policy, cfg, args.trl_chunk, workdir, bf16)
        accelerator = Accelerator(cpu=device.type == "cpu")
        module = grpo.TokenLogprobs(model_rods)
        if args.shard == "full":  # FSDP2 over a one-process group: the sharded code path, one device
            from rodscli.stages.shard import ShardedLaunch

            accelerator = ShardedLaunch("full", bf16)
            module = accelerator.prepare_model(module)
        pad = model_rods.config.pad_token_id if model_rods.config.pad_token_id is not None else 0
        trl_inputs = trl_batches(seqs, args.trl_chunk, pad, device)

        # the same loss on the whole batch as one micro-batch (token mean, both sides)
        rods_loss = T.accumulate(module, None, seqs, dataclasses.replace(cfg, micro_batch_tokens=10**9), accelerator)["loss"]
        [trl_whole] = trl_batches(seqs, len(seqs), pad, device)
        trainer.current_gradient_accumulation_steps = 1
        trl_loss = trainer.compute_loss(trainer.model, trl_whole).item()
        model_rods.zero_grad(set_to_none=True)
        model_trl.zero_grad(set_to_none=True)
        if abs(rods_loss - trl_loss) > 1e-3 * max(1.0, abs(trl_loss)):
            print(f"losses differ: rods {rods_loss} vs TRL {trl_loss}", file=sys.stderr)
            return 1

        def opt(model):
            return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate())

        opt_rods, opt_trl = opt(model_rods), opt(model_trl)

        def step_rods():
            opt_rods.zero_grad(set_to_none=True)
            T.accumulate(module, None, seqs, cfg, accelerator)
            torch.nn.utils.clip_grad_norm_(model_rods.parameters(), cfg.max_grad_norm)
            opt_rods.step()

        def step_trl():
            opt_trl.zero_grad(set_to_none=True)
            trainer.current_gradient_accumulation_steps = len(trl_inputs)
            for inputs in trl_inputs:
                trainer.compute_loss(trainer.model, inputs).backward()
            torch.nn.utils.clip_grad_norm_(model_trl.parameters(), cfg.max_grad_norm)
            opt_trl.step()

        def timed(fn) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

        step_rods(), step_trl()  # warm-up
        times = {"rods": [], "trl": []}
        for _ in range(args.steps):  # interleaved, so that machine load hits both sides alike
            times["rods"].append(timed(step_rods))
            times["trl"].append(timed(step_trl))
        tps = {k: tokens / statistics.median(v) for k, v in times.items()}
        result = {
            "bench": "train", "model": args.model, "device": str(device), "dtype": "bf16-autocast" if bf16 else "fp32",
            "params": n_params, "sequences": len(seqs), "tokens": tokens, "model_tokens": sum(s.model_tokens for s in seqs),
            "rods_micro_batches": len(T.micro_batches(seqs, cfg.micro_batch_tokens)), "trl_micro_batches": len(trl_inputs),
            "loss_rods": rods_loss, "loss_trl": trl_loss, "steps": args.steps, "threads": torch.get_num_threads(),
            "rods_tokens_per_s": round(tps["rods"], 1), "trl_tokens_per_s": round(tps["trl"], 1),
            "ratio": round(tps["rods"] / tps["trl"], 3), "rods_shard": args.shard,
        }
        if device.type == "cuda":
            # model FLOPs per token of a training step: 6 N (dense weights) + 12 L d s_avg (attention scores)
            c = model_rods.config
            s_avg = sum(len(s.token_ids) ** 2 for s in seqs) / tokens
            flops_tok = 6 * n_params + 12 * c.num_hidden_layers * c.hidden_size * s_avg
            name = torch.cuda.get_device_name(device)
            peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
            result.update(gpu=name, flops_per_token=flops_tok,
                          rods_mfu=round(flops_tok * tps["rods"] / peak, 4) if peak else None,
                          trl_mfu=round(flops_tok * tps["trl"] / peak, 4) if peak else None,
                          peak_memory_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 2))
        print(json.dumps(result))
    return 0


def bytes_per_rank(args) -> int:
    """`rods train-step` alone and on N sharded ranks; the busiest process's bytes from its metrics."""
    import os
    import subprocess

    from rodscli import records

    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        policy = make_policy(args, workdir)
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(str(policy)).vocab_size
        scored = make_batch(args.groups, args.group_size, args.turns, vocab, 0, tuple(int(x) for x in args.lengths.split(",")))
        records.write_records(workdir / "scored.jsonl", scored, "scored", validate=False)
        common = ["--no-validate", "--quiet", "train-step", "--policy", str(policy), "--scored", "scored.jsonl", "--lr", "1e-6"]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
        runs = {"alone": [str(bin_dir / "rods"), *common, "--out", "alone"],
                "sharded": [str(bin_dir / "torchrun"), "--nproc-per-node", str(args.bytes_ranks), "--standalone",
                            "-m", "rodscli.cli", *common, "--out", "sharded", "--shard", "full"]}
        held = {}
        for name, cmd in runs.items():
            proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            [metrics] = records.read_all(workdir / name / "metrics.jsonl", "metrics", validate=False)
            held[name] = metrics["extra"]["bytes_per_process"]
        total = {k: v["params"] + v["optimizer"] for k, v in held.items()}
        print(json.dumps({"bench": "train-bytes", "model": args.model, "ranks": args.bytes_ranks, "alone": held["alone"],
                          "sharded_busiest_rank": held["sharded"], "ratio": round(total["sharded"] / total["alone"], 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
