"""`rods train-step`: one GRPO update on scored rollouts (or an SFT warm start); writes a checkpoint.

The loop: read the batch -> group-relative advantages, zero-variance groups dropped -> for each
optimizer step (`ppo_epochs` x `mini_batches`; SFT: `epochs` x token-budget batches) compute one
loss weight per sequence over the whole step, shard the sequences over processes, pack each
shard into micro-batches by token count, accumulate gradients, clip, AdamW step -> write a
Hugging Face checkpoint with the tokenizer, the optimizer state and a metrics record.

Runs alone or under any multi-process launcher (torchrun, `accelerate launch`): every process
computes the same global weights, takes a deterministic shard of the sequences and scales its
loss by the world size (DDP and FSDP average gradients), so the update equals the
single-process one up to floating-point summation order. `--shard full|hybrid` shards the
model with PyTorch FSDP2 (stages/shard.py); checkpoints are stages/checkpoint.py's.

torch (and the math in rodscli.grpo) is imported inside the functions that use it, so that
`rods --help` and the other stages do not pay for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rodscli import console
from rodscli.config import option
from rodscli.errors import InputError, OptionError
from rodscli.policy import tiny
from rodscli.stages import shard as sharding
from rodscli.stages.checkpoint import (  # noqa: F401  (public names here too)
    OPTIMIZER_DIR,
    OPTIMIZER_FILE,
    STATE_FILE,
    check_policy,
    load_model,
    param_signature,
    read_state,
    restore_optimizer,
    write_checkpoint,
)

if TYPE_CHECKING:
    import torch

ADV_SCALES = ("group", "batch", "none")
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "dr-grpo")


SCHEDULES = ("constant", "cosine")
OPTIMIZER_STATES = ("auto", "restore", "fresh")


def lr_factor(step: int, total: int, schedule: str, warmup: float, floor: float = 0.1) -> float:
    """The multiplier of the base learning rate at optimizer step `step` (0-based) of `total`."""
    if schedule == "constant" or total <= 1:
        return 1.0
    warm = int(warmup * total)
    if step < warm:
        return (step + 1) / (warm + 1)
    progress = (step - warm) / max(1, total - 1 - warm)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainOptions:
    mode: str = option("grpo", help="grpo: one GRPO update on scored rollouts; sft: warm start on the tasks' reference solutions (--tasks).")
    lr: float | None = option(None, help="AdamW learning rate (default: grpo 1e-6; sft 3e-3 for the randomly initialised rods tiny policy, 1e-5 for a pretrained one).")
    weight_decay: float = option(0.0, help="AdamW weight decay.")
    beta1: float = option(0.9, help="AdamW beta1.")
    beta2: float = option(0.999, help="AdamW beta2.")
    adv_scale: str = option("group", help="Advantage std scaling: group (GRPO), batch (std of every kept reward) or none (Dr. GRPO).")
    eps_low: float = option(0.2, help="Clip range below 1 for the importance ratio.")
    eps_high: float = option(0.28, help="Clip range above 1 for the importance ratio (DAPO clip-higher).")
    kl_coef: float = option(0.0, help="Coefficient of the k3 KL penalty to the reference policy (0 = off).")
    ref_policy: str | None = option(None, help="Reference policy checkpoint for the KL penalty (default: the input policy).")
    loss_agg: str = option("token-mean", help="Loss aggregation: token-mean, seq-mean-token-mean or dr-grpo.")
    dr_grpo_norm: int = option(0, help="Constant token normaliser of dr-grpo (0 = the longest sequence's model tokens).")
    max_grad_norm: float = option(1.0, help="Clip the gradient to this global norm (0 = no clipping).")
    micro_batch_tokens: int = option(4096, help="Padded tokens per micro-batch (forward/backward); gradients accumulate to one optimizer step.")
    ppo_epochs: int = option(1, help="Passes over the batch (grpo); each pass takes --mini-batches optimizer steps.")
    mini_batches: int = option(1, help="Optimizer steps per pass over the batch (grpo).")
    epochs: int = option(2, help="Passes over the reference solutions (sft).")
    batch_tokens: int = option(4096, help="Tokens per optimizer step (sft; about two built-in task solutions).")
    sft_tokens: str = option("model", help="Tokens SFT learns to predict: model (the assistant's replies, as GRPO) or all (every token of the conversation: the prompt, user turns and tool results too; far more signal for a small model to learn copying values from its context).")
    schedule: str | None = option(None, help="Learning-rate schedule over this run's optimizer steps: constant, or cosine (linear warm-up over --warmup of the steps, then cosine decay to 10% of --lr). Default: cosine for sft, constant for grpo (one update per loop iteration).")
    warmup: float = option(0.05, help="Fraction of the optimizer steps spent warming the learning rate up linearly (cosine schedule).")
    temperature: float = option(1.0, help="Sampling temperature of the rollouts: logits are divided by it so ratios compare like with like.")
    optimizer_state: str = option("auto", help="The input checkpoint's AdamW moments: auto (go on with them when the same mode saved them, GRPO after GRPO or SFT after SFT; start a fresh optimizer when the mode changes, as for the first GRPO step after the SFT warm start), restore (whenever they fit the parameters) or fresh (never).")
    lora_r: int = option(0, help="Train a LoRA adapter of this rank (peft) instead of all weights; merged into the saved weights (0 = full fine-tuning).")
    lora_alpha: int = option(0, help="LoRA alpha (0 = 2 x rank).")
    bf16: bool = option(True, help="bf16 autocast on CUDA (master weights and optimizer stay fp32); ignored on CPU.")
    shard: str = option("none", help="none: every process holds the whole model (DDP); full: FSDP2 shards weights, gradients and AdamW state over all processes; hybrid: shard within a node, replicate across nodes.")
    activation_checkpointing: bool = option(False, help="Recompute each decoder layer's activations in the backward pass instead of keeping them (less memory, ~1/3 more compute).")
    chat_template: str | None = option(None, help="sft: Jinja chat template file that renders the reference solutions instead of the checkpoint's own (give the rollouts the same one).")

    def learning_rate(self, policy: str | Path | None = None) -> float:
        if self.lr is not None:
            return self.lr
        if self.mode == "grpo":
            return 1e-6
        # SFT from random weights (rods init-policy) needs a large step; a pretrained LM a small one
        return 3e-3 if tiny.policy_kind(policy) == tiny.KIND else 1e-5

    def check(self) -> None:
        choices = {"mode": ("grpo", "sft"), "adv_scale": ADV_SCALES, "loss_agg": LOSS_AGGS, "schedule": SCHEDULES,
                   "sft_tokens": ("model", "all"), "shard": sharding.SHARD_MODES, "optimizer_state": OPTIMIZER_STATES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed and not (name == "schedule" and self.schedule is None):
                raise OptionError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("micro_batch_tokens", "ppo_epochs", "mini_batches", "epochs", "batch_tokens"):
            if getattr(self, name) < 1:
                raise OptionError(f"--{name.replace('_', '-')} must be at least 1")
        if self.temperature <= 0:
            raise OptionError("--temperature must be positive")
        if not 0.0 <= self.warmup < 1.0:
            raise OptionError(f"--warmup must be in [0, 1), got {self.warmup}")

    @property
    def lr_schedule(self) -> str:
        return self.schedule or ("cosine" if self.mode == "sft" else "constant")


@dataclass
class Sequence:
    """One training sequence: an episode's tokens, loss mask, behaviour log-probs and advantage."""

    key: str
    token_ids: list[int]
    loss_mask: list[int]
    old_logprobs: list[float]
    advantage: float = 0.0
    weight: float = 0.0  # c_i of grpo.sequence_weights, set per optimizer step
    dummy: bool = False  # a zero-weight stand-in so that every process runs the same synced backward

    @property
    def model_tokens(self) -> int:
        return sum(self.loss_mask[1:])  # token 0 is never predicted


# ---------------------------------------------------------------------------------------
# batch preparation


def sequences_from_scored(scored: list[dict], cfg: TrainOptions, where: str = "scored") -> tuple[list[Sequence], dict]:
    """Kept sequences (with advantages) and the batch statistics: groups total/kept/dropped, rewards."""
    from rodscli import grpo

    for i, r in enumerate(scored, 1):
        n = len(r["token_ids"])
        if len(r["loss_mask"]) != n or len(r["logprobs"]) != n:
            raise InputError(f"token_ids, logprobs and loss_mask differ in length ({n}, {len(r['logprobs'])}, {len(r['loss_mask'])})", where=f"{where}: record {i}", field="loss_mask")
    rewards = [float(r["reward"]) for r in scored]
    adv, kept = grpo.group_advantages(rewards, [r["group_id"] for r in scored], cfg.adv_scale)
    groups = {r["group_id"] for r in scored}
    kept_groups = {r["group_id"] for r, k in zip(scored, kept, strict=True) if k}
    seqs = [
        Sequence(r["rollout_id"], list(r["token_ids"]), list(r["loss_mask"]), [float(x) for x in r["logprobs"]], a)
        for r, a, k in zip(scored, adv, kept, strict=True)
        if k and sum(r["loss_mask"][1:]) > 0
    ]
    stats = {
        "groups_total": len(groups),
        "groups_kept": len(kept_groups),
        "groups_dropped": len(groups) - len(kept_groups),
        "reward_mean": sum(rewards) / len(rewards) if rewards else None,
        "iteration": next((r.get("iteration") for r in scored if r.get("iteration") is not None), None),
    }
    return seqs, stats


def sequences_from_rendered(rendered: list[dict]) -> list[Sequence]:
    """SFT sequences from rollout-shaped teacher-forced records (token_ids + loss_mask)."""
    return [
        Sequence(str(r.get("rollout_id") or r.get("task_id") or i), list(r["token_ids"]), list(r["loss_mask"]), [0.0] * len(r["token_ids"]))
        for i, r in enumerate(rendered)
        if sum(r["loss_mask"][1:]) > 0
    ]


def shard(seqs: list[Sequence], rank: int, world: int) -> list[Sequence]:
    """This process's share: longest-first to the least-loaded process (deterministic, token-balanced)."""
    load = [0] * world
    mine: list[Sequence] = []
    for s in sorted(seqs, key=lambda s: (-len(s.token_ids), s.key)):
        target = min(range(world), key=lambda p: (load[p], p))
        load[target] += len(s.token_ids)
        if target == rank:
            mine.append(s)
    return mine


def micro_batches(seqs: list[Sequence], budget: int) -> list[list[Sequence]]:
    """Pack sequences (sorted by length) so that count x longest <= budget padded tokens."""
    batches: list[list[Sequence]] = []
    current: list[Sequence] = []
    for s in sorted(seqs, key=lambda s: (-len(s.token_ids), s.key)):
        longest = len(current[0].token_ids) if current else len(s.token_ids)
        if current and (len(current) + 1) * longest > budget:
            batches.append(current)
            current = []
        current.append(s)
    if current:
        batches.append(current)
    return batches


def grpo_steps(seqs: list[Sequence], cfg: TrainOptions, seed: int) -> list[list[Sequence]]:
    """The optimizer steps of a GRPO update: ppo_epochs passes, each split into mini_batches."""
    rng = random.Random(seed)
    steps = []
    for epoch in range(cfg.ppo_epochs):
        order = sorted(seqs, key=lambda s: s.key)
        if cfg.mini_batches > 1 or epoch > 0:
            rng.shuffle(order)
        n = min(cfg.mini_batches, len(order))
        steps += [order[i::n] for i in range(n)]
    return steps


def sft_steps(seqs: list[Sequence], cfg: TrainOptions, seed: int) -> list[list[Sequence]]:
    """The optimizer steps of SFT: each epoch shuffled, cut into batches of ~batch_tokens tokens."""
    rng = random.Random(seed)
    steps = []
    for _ in range(cfg.epochs):
        order = sorted(seqs, key=lambda s: s.key)
        rng.shuffle(order)
        step: list[Sequence] = []
        tokens = 0
        for s in order:
            if step and tokens + len(s.token_ids) > cfg.batch_tokens:
                steps.append(step)
                step, tokens = [], 0
            step.append(s)
            tokens += len(s.token_ids)
        if step:
            steps.append(step)
    return steps


# ---------------------------------------------------------------------------------------
# forward / backward


def _pad(batch: list[Sequence], device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded tensors of a micro-batch, plus per-loss-token advantage/weight/old log-prob."""
    import torch

    width = max(len(s.token_ids) for s in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    attn = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    old, adv, weight = [], [], []
    for row, s in enumerate(batch):
        n = len(s.token_ids)
        ids[row, :n] = torch.tensor(s.token_ids)
        attn[row, :n] = 1
        mask[row, 1:n] = torch.tensor(s.loss_mask[1:])
        k = s.model_tokens
        old += [lp for lp, m in zip(s.old_logprobs[1:], s.loss_mask[1:], strict=True) if m]
        adv += [s.advantage] * k
        weight += [s.weight] * k
    f = dict(dtype=torch.float32, device=device)
    return {
        "input_ids": ids.to(device), "attention_mask": attn.to(device), "loss_mask": mask.to(device),
        "old_logp": torch.tensor(old, **f), "advantages": torch.tensor(adv, **f), "weights": torch.tensor(weight, **f),
    }


_STAT_KEYS = ("loss", "pg", "kl", "entropy", "clip_low", "clip_high", "ratio", "tokens")


def accumulate(module, ref_module, step_seqs: list[Sequence], cfg: TrainOptions, accelerator) -> dict[str, float]:
    """Forward and backward every micro-batch of this process's shard of one optimizer step.

    Sets each sequence's weight over the whole step first (the same on every process), then
    leaves the summed gradient of the step's loss in the parameters' .grad. Returns the
    step's statistics reduced over processes (token means).
    """
    import torch

    from rodscli import grpo

    weights = grpo.sequence_weights([s.model_tokens for s in step_seqs], "token-mean" if cfg.mode == "sft" else cfg.loss_agg, cfg.dr_grpo_norm)
    step_seqs = [dataclasses.replace(s, weight=w) for s, w in zip(step_seqs, weights, strict=True)]
    world, device = accelerator.num_processes, accelerator.device
    local = shard(step_seqs, accelerator.process_index, world)
    # every process must run the same number of synced backward passes (sharded: of all
    # passes): an idle one runs a zero-weight copy of a real sequence
    batches = sharding.lockstep(micro_batches(local, cfg.micro_batch_tokens), [dataclasses.replace(step_seqs[0], weight=0.0, dummy=True)], accelerator)
    sums = torch.zeros(len(_STAT_KEYS), dtype=torch.float64, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16 else contextlib.nullcontext()
    for i, batch in enumerate(batches):
        t = _pad(batch, device)
        sync = contextlib.nullcontext() if i == len(batches) - 1 else accelerator.no_sync(module)
        with sync:
            with autocast:
                logp, entropy = module(t["input_ids"], t["attention_mask"], t["loss_mask"])
                ref_logp = None
                if ref_module is not None:
                    with torch.no_grad():
                        ref_logp, _ = ref_module(t["input_ids"], t["attention_mask"], t["loss_mask"])
            if cfg.mode == "sft":
                loss = grpo.sft_loss(logp, t["weights"])
                stats = {}
            else:
                loss, stats = grpo.policy_loss(logp, t["old_logp"], t["advantages"], t["weights"], cfg.eps_low, cfg.eps_high, ref_logp, cfg.kl_coef)
            # DDP averages gradients over processes; the weights already normalise globally
            (loss * world).backward()
        if batch[0].dummy:
            continue
        with torch.no_grad():
            n = float(logp.numel())
            row = [loss.item(), stats["pg"].item() if stats else loss.item(), stats["kl"].sum().item() if "kl" in stats else 0.0, entropy.sum().item()]
            row += [stats[k].sum().item() for k in ("clip_low", "clip_high", "ratio")] if stats else [0.0, 0.0, n]
            sums += torch.tensor(row + [n], dtype=torch.float64, device=device)
    sums = accelerator.reduce(sums, reduction="sum") if world > 1 else sums
    total = dict(zip(_STAT_KEYS, sums.tolist(), strict=True))
    n = max(total["tokens"], 1.0)
    return {
        "loss": total["loss"], "pg_loss": total["pg"], "kl": total["kl"] / n, "entropy": total["entropy"] / n,
        "clip_frac_low": total["clip_low"] / n, "clip_frac_high": total["clip_high"] / n, "ratio_mean": total["ratio"] / n,
        "model_tokens": int(total["tokens"]),
    }


# ---------------------------------------------------------------------------------------
# the update


def leave_process_group() -> None:
    """End this process's part of a multi-process run (torchrun, `accelerate launch`): destroy the process group, so
    that gloo's threads are joined before the interpreter exits (left running, they can abort
    a process that has finished its work: "terminate called without an active exception")."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _apply_lora(model, cfg: TrainOptions):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def check_token_ids(steps: list[list[Sequence]], vocab: int) -> None:
    """Every token id inside the model's embedding table (records from another model, or a
    server that sent ids it should not, would otherwise fail deep in the forward pass)."""
    for step in steps:
        for s in step:
            if s.token_ids and not 0 <= min(s.token_ids) <= max(s.token_ids) < vocab:
                bad = next(t for t in s.token_ids if not 0 <= t < vocab)
                raise InputError(f"token id {bad} is outside the model's vocabulary of {vocab}", where=s.key, field="token_ids")


def _run(policy: Path, out: Path, steps: list[list[Sequence]], batch_stats: dict, cfg: TrainOptions, seed: int, provenance_info: dict | None, validate: bool) -> dict:
    """Take the optimizer steps, write the checkpoint, return the metrics record."""
    accelerator = sharding.launch(cfg.shard, cfg.bf16)
    try:
        return _train(accelerator, policy, out, steps, batch_stats, cfg, seed, provenance_info, validate)
    finally:
        getattr(accelerator, "close", lambda: None)()


def _train(accelerator, policy: Path, out: Path, steps: list[list[Sequence]], batch_stats: dict, cfg: TrainOptions, seed: int,
           provenance_info: dict | None, validate: bool) -> dict:
    import torch

    from rodscli import grpo

    start = time.perf_counter()
    sharded = getattr(accelerator, "lockstep", False)
    if not accelerator.is_main_process:
        console.VERBOSITY = min(console.VERBOSITY, 0)  # one process reports; the others stay quiet
    torch.manual_seed(seed)
    state = read_state(policy)
    model = load_model(policy, accelerator.device)
    if cfg.activation_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x's name
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora_r > 0:
        model = _apply_lora(model, cfg)
    check_token_ids(steps, model.get_input_embeddings().num_embeddings)
    model.train()
    signature = None if cfg.lora_r > 0 else param_signature(model)  # names and full shapes, before any sharding
    lr = cfg.learning_rate(policy)
    module = grpo.TokenLogprobs(model, cfg.temperature)
    if sharded:  # wrap first: the optimizer must hold the parameters' shards
        module = accelerator.prepare_model(module)
    params = [p for p in model.parameters() if p.requires_grad]
    adamw = {"lr": lr, "betas": (cfg.beta1, cfg.beta2), "weight_decay": cfg.weight_decay}
    optimizer = torch.optim.AdamW(params, **adamw)
    restored = _may_restore(policy, state, cfg) and restore_optimizer(optimizer, model, policy, state, signature, adamw)
    if not sharded:
        module = accelerator.prepare_model(module)
    ref_module = None
    if cfg.mode == "grpo" and cfg.kl_coef > 0:
        ref = load_model(cfg.ref_policy or policy, accelerator.device).eval()
        ref.requires_grad_(False)
        ref_module = grpo.TokenLogprobs(ref, cfg.temperature)
        if sharded:
            ref_module = accelerator.prepare_model(ref_module)

    per_step, grad_norms, lrs = [], [], []

    def recent_loss() -> str:  # beside the progress bar: the mean loss of the last 20 steps
        recent = [m["loss"] for m in per_step[-20:]]
        return f"loss {sum(recent) / len(recent):.4f}" if recent else ""

    shown = console.progress(steps, f"{cfg.mode} optimizer steps", status=recent_loss) if accelerator.is_main_process else steps
    for i, step_seqs in enumerate(shown):
        lrs.append(lr * lr_factor(i, len(steps), cfg.lr_schedule, cfg.warmup))
        for group in optimizer.param_groups:
            group["lr"] = lrs[-1]
        optimizer.zero_grad(set_to_none=True)
        per_step.append(accumulate(module, ref_module, step_seqs, cfg, accelerator))
        # global gradient norm before clipping (clip_grad_norm_ with inf max still measures it)
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        grad_norms.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
        optimizer.step()

    model = accelerator.unwrap_model(module).model
    held = sharding.local_bytes(model, optimizer, accelerator)
    if cfg.lora_r > 0 and not sharded:
        model = model.merge_and_unload()
    elapsed = time.perf_counter() - start
    tokens = sum(len(s.token_ids) for step in steps for s in step)
    state = {**state, "step": int(state.get("step", 0)) + len(steps), "mode": cfg.mode, "lr": lr, "seed": seed,
             "params": signature, "optimizer_restored": restored}
    metrics = {
        "mode": cfg.mode, "step": state["step"], "iteration": batch_stats.get("iteration"), "updated": True,
        "loss": _mean(per_step, "loss"), "pg_loss": _mean(per_step, "pg_loss") if cfg.mode == "grpo" else None,
        "kl": _mean(per_step, "kl") if ref_module is not None else None, "entropy": _mean(per_step, "entropy"),
        "clip_frac_low": _mean(per_step, "clip_frac_low") if cfg.mode == "grpo" else None,
        "clip_frac_high": _mean(per_step, "clip_frac_high") if cfg.mode == "grpo" else None,
        "ratio_mean": _mean(per_step, "ratio_mean") if cfg.mode == "grpo" else None,
        "grad_norm": sum(grad_norms) / len(grad_norms), "lr": lr, "reward_mean": batch_stats.get("reward_mean"),
        "groups_total": batch_stats.get("groups_total", 0), "groups_kept": batch_stats.get("groups_kept", 0),
        "groups_dropped": batch_stats.get("groups_dropped", 0),
        "sequences": len({s.key for step in steps for s in step}), "tokens": tokens,
        "model_tokens": sum(m["model_tokens"] for m in per_step), "tokens_per_s": tokens / elapsed if elapsed > 0 else None,
        "time_s": elapsed,
        "extra": {"optimizer_steps": len(steps), "grad_norms": grad_norms, "processes": accelerator.num_processes,
                  "optimizer_restored": restored, "lora_r": cfg.lora_r, "schedule": cfg.lr_schedule, "warmup": cfg.warmup, "lrs": lrs,
                  "losses": [m["loss"] for m in per_step], "shard": cfg.shard, "bytes_per_process": held,
                  "sft_tokens": cfg.sft_tokens if cfg.mode == "sft" else None, "loss_agg": cfg.loss_agg, "adv_scale": cfg.adv_scale},
    }
    if sharded:  # every process takes part in gathering the weights and saving the optimizer shards
        full, stage = sharding.gather_and_save(accelerator, model, None if cfg.lora_r > 0 else optimizer, out)
        if accelerator.is_main_process:
            write_checkpoint(out, policy, _plain_model(policy, full, cfg), None, state, metrics, provenance_info, validate, sharded_optimizer=stage)
    elif accelerator.is_main_process:
        write_checkpoint(out, policy, model, None if cfg.lora_r > 0 else optimizer, state, metrics, provenance_info, validate)
    accelerator.wait_for_everyone()
    return metrics


def _plain_model(policy: Path, full_state: dict, cfg: TrainOptions):
    """The unsharded model holding the gathered weights (LoRA merged), for save_pretrained."""
    model = load_model(policy, "cpu")
    if cfg.lora_r > 0:
        model = _apply_lora(model, cfg)
    model.load_state_dict(full_state)  # copied into place: tied weights stay tied
    return model.merge_and_unload() if cfg.lora_r > 0 else model


def _mean(rows: list[dict], key: str) -> float | None:
    return sum(r[key] for r in rows) / len(rows) if rows else None


def _may_restore(policy: Path, state: dict, cfg: TrainOptions) -> bool:
    """Whether this step may go on with the input checkpoint's AdamW moments (--optimizer-state)."""
    if cfg.optimizer_state == "fresh":
        return False
    if cfg.optimizer_state == "auto" and state.get("mode", cfg.mode) != cfg.mode:
        # SFT's moments would steer GRPO: m is SFT's last gradient direction (0.9^k of it left
        # after k steps) and v, SFT's squared gradients, scales GRPO's steps for ~1/(1 - beta2)
        # = 1,000 steps; measured on one batch, ~9x smaller steps, less aligned with GRPO's
        # gradient (bench/grpo_step.py; docs/study.md, "GRPO headroom")
        if (policy / OPTIMIZER_FILE).exists() or (policy / OPTIMIZER_DIR).is_dir():
            console.info(f"[yellow]not restoring the optimizer state of {policy}: saved by {state.get('mode')}, "
                         f"this is {cfg.mode} (a fresh optimizer)[/yellow]")
        return False
    return True


def train_step(policy: str | Path, scored: list[dict], out: str | Path, cfg: TrainOptions, seed: int = 0,
               provenance_info: dict | None = None, validate: bool = True) -> dict:
    """One GRPO update of `policy` on scored rollouts; writes checkpoint `out`; returns the metrics record."""
    cfg.check()
    if cfg.mode != "grpo":
        raise OptionError("train_step is the grpo mode; use sft() for --mode sft")
    policy, out = Path(policy), Path(out)
    check_policy(policy)
    if not scored:
        raise InputError("no scored rollouts to train on")
    seqs, batch_stats = sequences_from_scored(scored, cfg)
    if not seqs:
        return _no_update(policy, out, scored, batch_stats, cfg, provenance_info, validate)
    return _run(policy, out, grpo_steps(seqs, cfg, seed), batch_stats, cfg, seed, provenance_info, validate)


def _no_update(policy: Path, out: Path, scored: list[dict], batch_stats: dict, cfg: TrainOptions, provenance_info: dict | None, validate: bool) -> dict:
    """Every group had zero reward variance: nothing to learn, the checkpoint is passed on unchanged."""
    start = time.perf_counter()
    state = read_state(policy)
    console.info(f"[yellow]no update[/yellow]: all {batch_stats['groups_total']} group(s) have zero reward variance; "
                 f"{out} holds the input weights unchanged")
    metrics = {
        "mode": "grpo", "step": int(state.get("step", 0)), "iteration": batch_stats.get("iteration"), "updated": False,
        "loss": None, "reward_mean": batch_stats.get("reward_mean"), "groups_total": batch_stats["groups_total"],
        "groups_kept": 0, "groups_dropped": batch_stats["groups_dropped"], "sequences": 0,
        "tokens": 0, "model_tokens": 0, "time_s": 0.0, "lr": cfg.learning_rate(),
        "extra": {"reason": "every group has zero reward variance", "rollouts": len(scored)},
    }
    if sharding.is_main_process():
        metrics["time_s"] = time.perf_counter() - start
        write_checkpoint(out, policy, None, None, state, metrics, provenance_info, validate)
    return metrics


def sft(policy: str | Path, rendered: list[dict], out: str | Path, cfg: TrainOptions, seed: int = 0,
        provenance_info: dict | None = None, validate: bool = True) -> dict:
    """Warm-start `policy` on teacher-forced reference solutions (rollout-shaped token_ids + loss_mask)."""
    cfg = dataclasses.replace(cfg, mode="sft")
    cfg.check()
    policy, out = Path(policy), Path(out)
    check_policy(policy)
    if cfg.sft_tokens == "all":
        rendered = [{**r, "loss_mask": [1] * len(r["token_ids"])} for r in rendered]
    seqs = sequences_from_rendered(rendered)
    if not seqs:
        raise InputError("no reference solution with model tokens to train on")
    return _run(policy, out, sft_steps(seqs, cfg, seed), {}, cfg, seed, provenance_info, validate)


def render_tasks(policy: str | Path, tasks: list[dict], chat_template: str | Path | None = None) -> list[dict]:
    """Every task's reference solution as a teacher-forced sequence, through the rollout engine's
    renderer (with the `chat_template` file instead of the checkpoint's template when given)."""
    from rodscli.policy.base import load_tokenizer
    from rodscli.policy.chat import ChatFormat, teacher_forced

    tokenizer = load_tokenizer(policy, chat_template)
    fmt = ChatFormat(tokenizer)
    return [teacher_forced(tokenizer, task, fmt=fmt) for task in tasks]
