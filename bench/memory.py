"""Memory and time of one GRPO step on paper: bytes per GPU under --shard none / full, and step time.

    .venv/bin/python bench/memory.py                 # the docs/scale-out.md table (Markdown)
    .venv/bin/python bench/memory.py --json          # the same numbers as JSON lines

Computed, not measured: a formula per line, written out below, from the models' published
shapes (Qwen3-4B, Qwen3-0.6B: hidden size, layers, MLP width, heads, vocabulary; tied
embeddings). What rods keeps on each GPU during train-step:

- weights: fp32 master copy, 4 bytes/parameter (bf16 autocast computes from it);
- gradients: fp32, 4 bytes/parameter;
- AdamW: two fp32 moments, 8 bytes/parameter;
  (--shard full divides all three by the number of GPUs N; FSDP2 also all-gathers one
  layer's bf16 weights at a time, counted as 2 layers of 2 bytes/parameter in flight);
- activations of one micro-batch (--micro-batch-tokens T, not divided by sharding): bf16
  tensors the backward keeps per token and layer, ~2 x (6h + 2 kv + 4 I) bytes for a
  SwiGLU block with grouped-query attention (h hidden, kv = key-value heads x head size,
  I the MLP width; flash/SDPA attention keeps no s x s scores); with activation
  checkpointing only each layer's bf16 input (2h bytes/token/layer) plus one layer's full set;
- log-probs: the LM head runs on loss tokens only; fp32 logits and their log-softmax,
  8 x vocabulary bytes per loss token (half the micro-batch's tokens assumed to be loss tokens).

Time of one optimizer step: 6 x parameters x tokens FLOPs (forward + backward) over N GPUs
at an assumed model FLOPs utilisation (--mfu, default 0.40) of a 989 TFLOP/s bf16 GPU
(H100/H200). The batch is the paper's: --tasks tasks x K=16 rollouts x --tokens per episode.
"""

from __future__ import annotations

import argparse
import json
import sys

# published shapes (config.json of the Hugging Face checkpoints)
MODELS = {
    "Qwen3-4B": {"hidden": 2560, "layers": 36, "mlp": 9728, "heads": 32, "kv_heads": 8, "head_dim": 128, "vocab": 151936},
    "Qwen3-0.6B": {"hidden": 1024, "layers": 28, "mlp": 3072, "heads": 16, "kv_heads": 8, "head_dim": 128, "vocab": 151936},
}
GB = 1e9
CARD_GB = 80


def parameters(m: dict) -> int:
    h, q, kv = m["hidden"], m["heads"] * m["head_dim"], m["kv_heads"] * m["head_dim"]
    attn = h * q + 2 * h * kv + q * h + 2 * m["head_dim"]  # q, k, v, o projections; q/k norms
    mlp = 3 * h * m["mlp"]  # gate, up, down
    per_layer = attn + mlp + 2 * h  # two RMSNorms
    return m["layers"] * per_layer + m["vocab"] * h + h  # tied embedding / LM head, final norm


def per_gpu(m: dict, gpus: int, shard: str, tokens: int, checkpointing: bool) -> dict:
    n = parameters(m)
    div = gpus if shard == "full" else 1
    h, kv, inter, layers = m["hidden"], m["kv_heads"] * m["head_dim"], m["mlp"], m["layers"]
    full_layer = 2 * (6 * h + 2 * kv + 4 * inter)  # bytes per token, one layer
    acts = tokens * (2 * h * layers + full_layer) if checkpointing else tokens * full_layer * layers
    out = {
        "weights": 4 * n / div, "gradients": 4 * n / div, "adamw": 8 * n / div,
        "gathered": 2 * 2 * (n - m["vocab"] * h) / layers if shard == "full" and gpus > 1 else 0.0,
        "activations": acts, "logprobs": 8 * m["vocab"] * tokens / 2,
    }
    out["total"] = sum(out.values())
    return out


def step_seconds(m: dict, gpus: int, tasks: int, k: int, tokens_per_episode: int, mfu: float, peak: float = 989e12) -> float:
    return 6 * parameters(m) * tasks * k * tokens_per_episode / (gpus * peak * mfu)


def rows(args) -> list[dict]:
    out = []
    for name, m in MODELS.items():
        for gpus in (1, 8, 16):
            for shard in ("none", "full"):
                if shard == "full" and gpus == 1:
                    continue
                for ckpt in (False, True):
                    b = per_gpu(m, gpus, shard, args.micro_batch_tokens, ckpt)
                    out.append({"model": name, "params": parameters(m), "gpus": gpus, "shard": shard, "act_ckpt": ckpt,
                                **{k: round(v / GB, 2) for k, v in b.items()}, "fits_80gb": b["total"] / GB <= CARD_GB,
                                "step_s": round(step_seconds(m, gpus, args.tasks, 16, args.tokens, args.mfu), 1)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--micro-batch-tokens", type=int, default=4096, help="train-step --micro-batch-tokens")
    ap.add_argument("--tasks", type=int, default=16, help="tasks per batch (each with K=16 rollouts)")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per episode (prompt, replies, tool outputs)")
    ap.add_argument("--mfu", type=float, default=0.40, help="assumed model FLOPs utilisation")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    table = rows(args)
    if args.json:
        for r in table:
            print(json.dumps(r))
        return 0
    print(f"GB per GPU; micro-batch {args.micro_batch_tokens} tokens; step = {args.tasks} tasks x K=16 x {args.tokens} tokens "
          f"at {args.mfu:.0%} MFU of 989 TFLOP/s\n")
    print("| model | GPUs | shard | act. ckpt | weights | grads | AdamW | gathered | activations | log-probs | total | fits 80 GB | step s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['model']} | {r['gpus']} | {r['shard']} | {'on' if r['act_ckpt'] else 'off'} | {r['weights']} | {r['gradients']} | "
              f"{r['adamw']} | {r['gathered']} | {r['activations']} | {r['logprobs']} | {r['total']} | "
              f"{'yes' if r['fits_80gb'] else 'no'} | {r['step_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
