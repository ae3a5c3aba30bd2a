"""Training sequences of `rods train-step`: made from records, cut into optimizer steps, shared
out over the processes of a launch and packed into micro-batches (stages/train.py runs them).

Every choice here is deterministic (sorted keys, seeded shuffles), so every process of a
launch computes the same steps and the same shares without talking to the others.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rodscli.errors import InputError

if TYPE_CHECKING:
    from rodscli.stages.train import TrainOptions


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


def _passes(seqs: list[Sequence], epochs: int, seed: int, shuffle_first: bool = True) -> Iterator[list[Sequence]]:
    """`epochs` orders of the sequences: sorted by key, then shuffled by one seeded generator
    (the first pass too when `shuffle_first`)."""
    rng = random.Random(seed)
    for epoch in range(epochs):
        order = sorted(seqs, key=lambda s: s.key)
        if shuffle_first or epoch > 0:
            rng.shuffle(order)
        yield order


def grpo_steps(seqs: list[Sequence], cfg: TrainOptions, seed: int) -> list[list[Sequence]]:
    """The optimizer steps of a GRPO update: ppo_epochs passes, each split into mini_batches."""
    steps = []
    for order in _passes(seqs, cfg.ppo_epochs, seed, shuffle_first=cfg.mini_batches > 1):
        n = min(cfg.mini_batches, len(order))
        steps += [order[i::n] for i in range(n)]
    return steps


def sft_steps(seqs: list[Sequence], cfg: TrainOptions, seed: int) -> list[list[Sequence]]:
    """The optimizer steps of SFT: each epoch shuffled, cut into batches of ~batch_tokens tokens."""
    steps = []
    for order in _passes(seqs, cfg.epochs, seed):
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
