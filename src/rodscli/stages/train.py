"""`rods train-step`: one GRPO update on scored rollouts (or an SFT warm start); writes a checkpoint.

The loop: read the batch -> group-relative advantages, zero-variance groups dropped -> for each
optimizer step (`ppo_epochs` x `mini_batches`; SFT: `epochs` x token-budget batches) compute one
loss weight per sequence over the whole step, shard the sequences over processes, pack each
shard into micro-batches by token count (stages/sequences.py), accumulate gradients, clip,
AdamW step -> an `Update`: the metrics record and the trained model, which the caller saves as
a Hugging Face checkpoint with the tokenizer, the optimizer state and the metrics
(`Update.save`). The library writes and prints nothing itself; progress and warnings go to the
`reporter` it is given (rodscli.reporter).

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
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rodscli.config import option
from rodscli.errors import InputError, OptionError
from rodscli.policy import tiny
from rodscli.reporter import Reporter, Silent, or_silent
from rodscli.stages import shard as sharding
from rodscli.stages.checkpoint import (  # noqa: F401  (public names here too)
    OPTIMIZER_DIR,
    OPTIMIZER_FILE,
    STATE_FILE,
    Update,
    check_policy,
    load_model,
    param_signature,
    read_state,
    restore_optimizer,
    write_checkpoint,
)
from rodscli.stages.sequences import (  # noqa: F401  (public names here too)
    Sequence,
    grpo_steps,
    micro_batches,
    sequences_from_rendered,
    sequences_from_scored,
    sft_steps,
    shard,
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
    chat_template: str | None = option(None, help="Jinja chat template file, written into the output checkpoint (its rollouts render with it); sft renders the reference solutions with it instead of the checkpoint's own.")

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
    with warnings.catch_warnings():  # peft reads an attribute transformers deprecated: a warning the user can do nothing about
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


def check_token_ids(steps: list[list[Sequence]], vocab: int) -> None:
    """Every token id inside the model's embedding table (records from another model, or a
    server that sent ids it should not, would otherwise fail deep in the forward pass)."""
    for step in steps:
        for s in step:
            if s.token_ids and not 0 <= min(s.token_ids) <= max(s.token_ids) < vocab:
                bad = next(t for t in s.token_ids if not 0 <= t < vocab)
                raise InputError(f"token id {bad} is outside the model's vocabulary of {vocab}", where=s.key, field="token_ids")


@dataclass
class _Parts:
    """What one update works with in this process."""

    model: Any  # the causal LM (a peft model with --lora-r), unwrapped
    module: Any  # what the loop calls: grpo.TokenLogprobs over `model`, prepared for the launch
    ref_module: Any  # the KL reference's TokenLogprobs (None: no KL term)
    optimizer: Any
    params: list
    signature: list | None  # the trained parameters' names and full shapes (None: LoRA)
    lr: float
    restored: bool  # the input checkpoint's AdamW moments were restored


def _run(policy: Path, steps: list[list[Sequence]], batch_stats: dict, cfg: TrainOptions, seed: int,
         reporter: Reporter | None, chat_template: str | None) -> Update:
    """Start the launch and take the optimizer steps; the Update holds it until it is saved."""
    launch = sharding.launch(cfg.shard, cfg.bf16)
    try:
        return _train(launch, policy, steps, batch_stats, cfg, seed, reporter, chat_template)
    except BaseException:
        getattr(launch, "close", lambda: None)()
        raise


def _train(launch, policy: Path, steps: list[list[Sequence]], batch_stats: dict, cfg: TrainOptions, seed: int,
           reporter: Reporter | None, chat_template: str | None) -> Update:
    import torch

    start = time.perf_counter()
    # one process reports (the others would repeat it)
    reporter = or_silent(reporter) if launch.is_main_process else Silent()
    torch.manual_seed(seed)
    state = read_state(policy)
    parts = _prepare(launch, policy, state, steps, cfg, reporter)
    with sharding.view_outputs_allowed():
        per_step, grad_norms, lrs = _optimize(launch, parts, steps, cfg, reporter)
    model = launch.unwrap_model(parts.module).model
    held = sharding.local_bytes(model, parts.optimizer, launch)
    state = {**state, "step": int(state.get("step", 0)) + len(steps), "mode": cfg.mode, "lr": parts.lr, "seed": seed,
             "params": parts.signature, "optimizer_restored": parts.restored}
    metrics = _metrics(state, batch_stats, steps, per_step, grad_norms, lrs, cfg, parts, time.perf_counter() - start)
    metrics["extra"].update(processes=launch.num_processes, bytes_per_process=held)
    optimizer = None if cfg.lora_r > 0 else parts.optimizer
    if not getattr(launch, "lockstep", False):
        saved = model.merge_and_unload() if cfg.lora_r > 0 else model
        return Update(policy, metrics, state, launch.is_main_process, saved, optimizer, None, launch, chat_template)
    full = sharding.gather_weights(launch, model)  # every process takes part
    saved = _plain_model(policy, full, cfg) if launch.is_main_process else None
    return Update(policy, metrics, state, launch.is_main_process, saved, optimizer, model, launch, chat_template)


def _prepare(launch, policy: Path, state: dict, steps: list[list[Sequence]], cfg: TrainOptions, reporter: Reporter) -> _Parts:
    """Load the model (and the KL reference), wrap it for the launch, build AdamW and restore its moments."""
    import torch

    from rodscli import grpo

    sharded = getattr(launch, "lockstep", False)
    model = load_model(policy, launch.device)
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
        module = launch.prepare_model(module)
    params = [p for p in model.parameters() if p.requires_grad]
    adamw = {"lr": lr, "betas": (cfg.beta1, cfg.beta2), "weight_decay": cfg.weight_decay}
    optimizer = torch.optim.AdamW(params, **adamw)
    restored = _may_restore(policy, state, cfg, reporter) and restore_optimizer(optimizer, model, policy, state, signature, adamw, reporter)
    if not sharded:
        module = launch.prepare_model(module)
    ref_module = None
    if cfg.mode == "grpo" and cfg.kl_coef > 0:
        ref = load_model(cfg.ref_policy or policy, launch.device).eval()
        ref.requires_grad_(False)
        ref_module = grpo.TokenLogprobs(ref, cfg.temperature)
        if sharded:
            ref_module = launch.prepare_model(ref_module)
    return _Parts(model, module, ref_module, optimizer, params, signature, lr, restored)


def _optimize(launch, parts: _Parts, steps: list[list[Sequence]], cfg: TrainOptions, reporter: Reporter) -> tuple[list[dict], list[float], list[float]]:
    """Take the optimizer steps; each one's statistics, gradient norm (before clipping) and learning rate."""
    import torch

    per_step: list[dict] = []
    grad_norms: list[float] = []
    lrs: list[float] = []

    def recent_loss() -> str:  # beside the progress bar: the mean loss of the last 20 steps
        recent = [m["loss"] for m in per_step[-20:]]
        return f"loss {sum(recent) / len(recent):.4f}" if recent else ""

    for i, step_seqs in enumerate(reporter.track(steps, f"{cfg.mode} optimizer steps", status=recent_loss)):
        lrs.append(parts.lr * lr_factor(i, len(steps), cfg.lr_schedule, cfg.warmup))
        for group in parts.optimizer.param_groups:
            group["lr"] = lrs[-1]
        parts.optimizer.zero_grad(set_to_none=True)
        per_step.append(accumulate(parts.module, parts.ref_module, step_seqs, cfg, launch))
        # global gradient norm before clipping (clip_grad_norm_ with inf max still measures it)
        norm = torch.nn.utils.clip_grad_norm_(parts.params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        grad_norms.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
        parts.optimizer.step()
    return per_step, grad_norms, lrs


def _metrics(state: dict, batch_stats: dict, steps: list[list[Sequence]], per_step: list[dict], grad_norms: list[float],
             lrs: list[float], cfg: TrainOptions, parts: _Parts, elapsed: float) -> dict:
    """The metrics record of an update (schemas/metrics.json); extra.processes and bytes_per_process are the launch's."""
    grpo_only = cfg.mode == "grpo"
    tokens = sum(len(s.token_ids) for step in steps for s in step)
    return {
        "mode": cfg.mode, "step": state["step"], "iteration": batch_stats.get("iteration"), "updated": True,
        "loss": _mean(per_step, "loss"), "pg_loss": _mean(per_step, "pg_loss") if grpo_only else None,
        "kl": _mean(per_step, "kl") if parts.ref_module is not None else None, "entropy": _mean(per_step, "entropy"),
        "clip_frac_low": _mean(per_step, "clip_frac_low") if grpo_only else None,
        "clip_frac_high": _mean(per_step, "clip_frac_high") if grpo_only else None,
        "ratio_mean": _mean(per_step, "ratio_mean") if grpo_only else None,
        "grad_norm": sum(grad_norms) / len(grad_norms), "lr": parts.lr, "reward_mean": batch_stats.get("reward_mean"),
        "groups_total": batch_stats.get("groups_total", 0), "groups_kept": batch_stats.get("groups_kept", 0),
        "groups_dropped": batch_stats.get("groups_dropped", 0),
        "sequences": len({s.key for step in steps for s in step}), "tokens": tokens,
        "model_tokens": sum(m["model_tokens"] for m in per_step), "tokens_per_s": tokens / elapsed if elapsed > 0 else None,
        "time_s": elapsed,
        "extra": {"optimizer_steps": len(steps), "grad_norms": grad_norms, "processes": None,
                  "optimizer_restored": parts.restored, "lora_r": cfg.lora_r, "schedule": cfg.lr_schedule, "warmup": cfg.warmup, "lrs": lrs,
                  "losses": [m["loss"] for m in per_step], "shard": cfg.shard, "bytes_per_process": None,
                  "sft_tokens": cfg.sft_tokens if cfg.mode == "sft" else None, "loss_agg": cfg.loss_agg, "adv_scale": cfg.adv_scale},
    }


def _plain_model(policy: Path, full_state: dict, cfg: TrainOptions):
    """The unsharded model holding the gathered weights (LoRA merged), for save_pretrained."""
    model = load_model(policy, "cpu")
    if cfg.lora_r > 0:
        model = _apply_lora(model, cfg)
    model.load_state_dict(full_state)  # copied into place: tied weights stay tied
    return model.merge_and_unload() if cfg.lora_r > 0 else model


def _mean(rows: list[dict], key: str) -> float | None:
    return sum(r[key] for r in rows) / len(rows) if rows else None


def _may_restore(policy: Path, state: dict, cfg: TrainOptions, reporter: Reporter) -> bool:
    """Whether this step may go on with the input checkpoint's AdamW moments (--optimizer-state)."""
    if cfg.optimizer_state == "fresh":
        return False
    if cfg.optimizer_state == "auto" and state.get("mode", cfg.mode) != cfg.mode:
        # SFT's moments would steer GRPO: m is SFT's last gradient direction (0.9^k of it left
        # after k steps) and v, SFT's squared gradients, scales GRPO's steps for ~1/(1 - beta2)
        # = 1,000 steps; measured on one batch, ~9x smaller steps, less aligned with GRPO's
        # gradient (bench/grpo_step.py; docs/study.md, "GRPO headroom")
        if (policy / OPTIMIZER_FILE).exists() or (policy / OPTIMIZER_DIR).is_dir():
            reporter.warn(f"not restoring the optimizer state of {policy}: saved by {state.get('mode')}, "
                          f"this is {cfg.mode} (a fresh optimizer)")
        return False
    return True


def _template(cfg: TrainOptions) -> str | None:
    """The text of --chat-template (read before any work: a bad file is a user error)."""
    from rodscli.policy.base import read_chat_template

    return read_chat_template(cfg.chat_template) if cfg.chat_template is not None else None


def train_step(policy: str | Path, scored: list[dict], cfg: TrainOptions, seed: int = 0, reporter: Reporter | None = None) -> Update:
    """One GRPO update of `policy` on scored rollouts. Writes nothing: `.save(out)` on the
    returned Update writes the checkpoint (on every process of a launch); `.metrics` is its record."""
    cfg.check()
    if cfg.mode != "grpo":
        raise OptionError("train_step is the grpo mode; use sft() for --mode sft")
    policy = Path(policy)
    check_policy(policy)
    if not scored:
        raise InputError("no scored rollouts to train on")
    template = _template(cfg)
    seqs, batch_stats = sequences_from_scored(scored, cfg)
    if not seqs:
        return _no_update(policy, scored, batch_stats, cfg, template)
    return _run(policy, grpo_steps(seqs, cfg, seed), batch_stats, cfg, seed, reporter, template)


def _no_update(policy: Path, scored: list[dict], batch_stats: dict, cfg: TrainOptions, template: str | None) -> Update:
    """Every group had zero reward variance: nothing to learn, the checkpoint is passed on unchanged."""
    start = time.perf_counter()
    state = read_state(policy)
    metrics = {
        "mode": "grpo", "step": int(state.get("step", 0)), "iteration": batch_stats.get("iteration"), "updated": False,
        "loss": None, "reward_mean": batch_stats.get("reward_mean"), "groups_total": batch_stats["groups_total"],
        "groups_kept": 0, "groups_dropped": batch_stats["groups_dropped"], "sequences": 0,
        "tokens": 0, "model_tokens": 0, "time_s": 0.0, "lr": cfg.learning_rate(),
        "extra": {"reason": "every group has zero reward variance", "rollouts": len(scored)},
    }
    metrics["time_s"] = time.perf_counter() - start
    return Update(policy, metrics, state, sharding.is_main_process(), chat_template=template)


def sft(policy: str | Path, rendered: list[dict], cfg: TrainOptions, seed: int = 0, reporter: Reporter | None = None) -> Update:
    """Warm-start `policy` on teacher-forced reference solutions (rollout-shaped token_ids + loss_mask).
    Writes nothing: `.save(out)` on the returned Update writes the checkpoint."""
    cfg = dataclasses.replace(cfg, mode="sft")
    cfg.check()
    policy = Path(policy)
    check_policy(policy)
    template = _template(cfg)
    if cfg.sft_tokens == "all":
        rendered = [{**r, "loss_mask": [1] * len(r["token_ids"])} for r in rendered]
    seqs = sequences_from_rendered(rendered)
    if not seqs:
        raise InputError("no reference solution with model tokens to train on")
    return _run(policy, sft_steps(seqs, cfg, seed), {}, cfg, seed, reporter, template)


def render_tasks(policy: str | Path, tasks: list[dict], chat_template: str | Path | None = None) -> list[dict]:
    """Every task's reference solution as a teacher-forced sequence, through the rollout engine's
    renderer (with the `chat_template` file instead of the checkpoint's template when given)."""
    from rodscli.policy.base import load_tokenizer
    from rodscli.policy.chat import ChatFormat, teacher_forced

    tokenizer = load_tokenizer(policy, chat_template)
    fmt = ChatFormat(tokenizer)
    return [teacher_forced(tokenizer, task, fmt=fmt) for task in tasks]
