"""GRPO math: group-relative advantages, token log-probs, the clipped surrogate and its aggregation.

Written to be read top to bottom next to the papers (DeepSeekMath GRPO, DAPO's asymmetric clip
and dynamic filtering, Dr. GRPO's constant normaliser). Everything here is a pure function of
tensors or plain lists; the training loop (stages/train.py) decides batching and devices.

Conventions: a sequence is a whole episode's token ids with a loss mask (1 = a token the model
produced). Causal LMs predict token t from positions < t, so the log-prob of token t comes from
the logits at position t-1; token 0 is never predicted and never carries loss. Every loss here
is a weighted sum over loss tokens, `sum_i c_i * sum_t m_it * l_it`, with one weight c_i per
sequence computed over the whole optimizer batch (all micro-batches, all processes): that is
how micro-batching and data parallelism give exactly the single-batch loss.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

# groups whose rewards span less than this have zero variance (rewards are fractions of turns)
ZERO_SPREAD = 1e-9


def group_advantages(rewards: list[float], group_ids: list[str], scale: str = "group", eps: float = 1e-6) -> tuple[list[float], list[bool]]:
    """Advantage of every rollout and whether its group is kept (non-zero reward variance).

    Group-relative advantage (GRPO): A_i = (r_i - mean_g(r)) / (std + eps), where std is the
    sample std of the group (`group`), of every kept reward in the batch (`batch`), or 1 (`none`).
    Dynamic filtering (DAPO): a group whose rewards are all equal has A = 0 for every member and
    no gradient, so it is dropped (kept = False).
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"unknown advantage scale {scale!r}")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(group_ids):
        members[g].append(i)
    adv = [0.0] * len(rewards)
    kept = [False] * len(rewards)
    kept_rewards: list[float] = []
    group_std: dict[str, float] = {}
    for g, idx in members.items():
        r = [float(rewards[i]) for i in idx]
        if max(r) - min(r) <= ZERO_SPREAD:
            continue
        mean = sum(r) / len(r)
        group_std[g] = math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))  # sample std (ddof=1), as TRL
        kept_rewards += r
        for i in idx:
            adv[i] = float(rewards[i]) - mean
            kept[i] = True
    if scale == "batch" and len(kept_rewards) > 1:
        mean = sum(kept_rewards) / len(kept_rewards)
        batch_std = math.sqrt(sum((x - mean) ** 2 for x in kept_rewards) / (len(kept_rewards) - 1))
    for g, idx in members.items():
        if g not in group_std:
            continue
        denom = {"group": group_std[g] + eps, "batch": batch_std + eps if scale == "batch" else 1.0, "none": 1.0}[scale]
        for i in idx:
            adv[i] /= denom
    return adv, kept


def sequence_weights(model_tokens: list[int], agg: str, dr_grpo_norm: int = 0) -> list[float]:
    """Weight c_i of each sequence so that the batch loss is sum_i c_i * sum_t m_it * l_it.

    token-mean            c_i = 1 / sum_j n_j           (every model token counts the same; DAPO)
    seq-mean-token-mean   c_i = 1 / (N * n_i)           (mean over sequences of each sequence's mean; GRPO paper)
    dr-grpo               c_i = 1 / (N * L)             (constant L: no length bias; Dr. GRPO)
    with n_i the model tokens of sequence i, N the number of sequences and L = dr_grpo_norm, or the
    longest n_i of the batch when 0.
    """
    if agg not in ("token-mean", "seq-mean-token-mean", "dr-grpo"):
        raise ValueError(f"unknown loss aggregation {agg!r}")
    n_seq = len(model_tokens)
    total = sum(model_tokens)
    if n_seq == 0 or total == 0:
        return [0.0] * n_seq
    if agg == "token-mean":
        return [1.0 / total] * n_seq
    if agg == "seq-mean-token-mean":
        return [1.0 / (n_seq * n) if n else 0.0 for n in model_tokens]
    norm = dr_grpo_norm or max(model_tokens)
    return [1.0 / (n_seq * norm)] * n_seq


class TokenLogprobs(nn.Module):
    """log pi(x_t | x_<t) and the policy entropy at the loss tokens of a padded batch.

    Only the positions that predict a loss token go through the LM head, so prompts and tool
    outputs cost a backbone pass but no vocabulary projection. Returns flat tensors over the
    loss tokens in row-major order (sequence by sequence, left to right). Wrapping the causal
    LM in this module is also what DDP needs: the whole computation is one `forward`.
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.temperature = temperature

    def causal_lm(self) -> nn.Module:
        m = self.model
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lm = self.causal_lm()
        hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        # the shift: the state at position t-1 predicts token t
        predicts = loss_mask[:, 1:].bool()
        h = hidden[:, :-1][predicts]
        targets = input_ids[:, 1:][predicts]
        logits = lm.get_output_embeddings()(h).float() / self.temperature
        logp_all = F.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            # entropy H = -sum_v p_v log p_v, a diagnostic only
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss over flat loss tokens, and per-token diagnostics (detached).

    All inputs are per loss token: new log-probs (with grad), behaviour log-probs, the token's
    sequence advantage and its sequence weight c_i. Returns sum_t c_t * l_t.
    """
    # importance ratio against the behaviour policy: rho = exp(log pi_theta - log pi_behaviour)
    ratio = torch.exp(logp - old_logp)
    # clipped surrogate with asymmetric clip (DAPO clip-higher): -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    pg = -torch.minimum(ratio * advantages, clipped * advantages)
    per_token = pg
    kl = None
    if ref_logp is not None:
        # k3 estimator of KL(pi_theta || pi_ref) (Schulman): exp(ref - logp) - (ref - logp) - 1 >= 0
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1.0
        per_token = pg + kl_coef * kl
    loss = (weights * per_token).sum()
    with torch.no_grad():
        stats = {
            "pg": (weights * pg).sum(),
            "ratio": ratio.detach(),
            "clip_low": ((ratio < 1.0 - eps_low) & (advantages < 0)).float(),
            "clip_high": ((ratio > 1.0 + eps_high) & (advantages > 0)).float(),
        }
        if kl is not None:
            stats["kl"] = kl.detach()
    return loss, stats


def sft_loss(logp: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the loss tokens: sum_t c_t * (-log pi(x_t | x_<t))."""
    return -(weights * logp).sum()
