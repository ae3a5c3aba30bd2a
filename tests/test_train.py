"""rods train-step: the GRPO formulas on hand-computed numbers, the loss and gradients against a
direct implementation, dynamic filtering, learning direction, determinism, checkpoints, SFT, LoRA.

Real tiny Llama models made in the test (random init, saved with save_pretrained); token ids
are used directly, so no tokenizer is needed for the loss math.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from rodscli import grpo, records
from rodscli.cli import main
from rodscli.errors import InputError, OptionError
from rodscli.stages import train as T

VOCAB = 48


def tiny_llama(path: Path, seed: int = 0) -> Path:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("policy") / "p0")


def scored_record(group: str, k: int, token_ids: list[int], loss_mask: list[int], reward: float, logprobs=None) -> dict:
    """A complete scored record (validates against schemas/scored.json)."""
    return {
        "rollout_id": f"{group}/{k}", "task_id": group, "group_id": group, "sample_index": k, "policy_id": "tiny",
        "messages": [], "calls": [], "token_ids": token_ids,
        "logprobs": logprobs if logprobs is not None else [-3.0 if m else 0.0 for m in loss_mask],
        "loss_mask": loss_mask, "finish_reason": "done", "n_user_turns": 1, "n_turns_reached": 1,
        "turn_state_hashes": ["x"], "skill": "base", "reward": reward, "reward_name": "progress", "progress": reward,
        "outcome": float(reward == 1.0), "turn_scores": [int(reward == 1.0)], "validity": 1.0, "coverage": reward,
        "efficiency": 0.0, "name_precision": 1.0, "arg_accuracy": 1.0, "format_penalty": 0.0,
    }


def batch(groups: int = 3, size: int = 4, seed: int = 0, zero_variance: bool = False) -> list[dict]:
    """Multi-turn-shaped episodes: prompt (mask 0), completion, tool output (mask 0), completion."""
    rng = random.Random(seed)
    out = []
    for g in range(groups):
        for k in range(size):
            parts = [(0, rng.randint(3, 6)), (1, rng.randint(2, 7)), (0, rng.randint(1, 4)), (1, rng.randint(2, 6))]
            mask = [m for m, n in parts for _ in range(n)]
            ids = [rng.randrange(VOCAB) for _ in mask]
            reward = 0.5 if zero_variance else float((k + g) % 2) * (1.0 if g % 2 else 0.5)
            out.append(scored_record(f"g{g}", k, ids, mask, reward))
    return out


def train_and_save(policy, scored: list[dict], out: Path, cfg: T.TrainOptions, seed: int = 0) -> dict:
    """A GRPO update saved as the CLI saves it: the checkpoint at `out`; returns the metrics record."""
    update = T.train_step(policy, scored, cfg, seed=seed)
    update.save(out)
    return update.metrics


def sft_and_save(policy, rendered: list[dict], out: Path, cfg: T.TrainOptions, seed: int = 0) -> dict:
    update = T.sft(policy, rendered, cfg, seed=seed)
    update.save(out)
    return update.metrics


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


# ---------------------------------------------------------------------------------------
# formulas on hand-computed numbers


def test_group_advantages_hand_computed():
    rewards = [1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 0.0]
    groups = ["a"] * 4 + ["b"] * 2 + ["c"] * 2
    adv, kept = grpo.group_advantages(rewards, groups, "none")
    assert kept == [True] * 4 + [False] * 2 + [True] * 2  # b has zero variance: dropped
    assert adv == pytest.approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0.5, -0.5])
    adv, _ = grpo.group_advantages(rewards, groups, "group", eps=0.0)
    # group a: mean 0.25, sample std sqrt(0.75 / 3) = 0.5; group c: std sqrt(0.5) = 0.7071
    assert adv == pytest.approx([1.5, -0.5, -0.5, -0.5, 0, 0, 0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5)])
    adv, _ = grpo.group_advantages(rewards, groups, "batch", eps=0.0)
    # kept rewards 1, 0, 0, 0, 1, 0: mean 1/3, sample variance (4/9*2 + 1/9*4) / 5 = 4/15
    std = math.sqrt(4 / 15)
    assert adv == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std, 0, 0, 0.5 / std, -0.5 / std])


def test_sequence_weights_hand_computed():
    assert grpo.sequence_weights([2, 6], "token-mean") == pytest.approx([1 / 8, 1 / 8])
    assert grpo.sequence_weights([2, 6], "seq-mean-token-mean") == pytest.approx([1 / 4, 1 / 12])
    assert grpo.sequence_weights([2, 6], "dr-grpo") == pytest.approx([1 / 12, 1 / 12])
    assert grpo.sequence_weights([2, 6], "dr-grpo", dr_grpo_norm=10) == pytest.approx([1 / 20, 1 / 20])


def test_policy_loss_clips_on_both_sides():
    # ratios 1.5 (above 1 + 0.28), 0.5 (below 1 - 0.2), 1.1 (inside), for A = +1 and -1
    ratio = torch.tensor([1.5, 0.5, 1.1, 1.5, 0.5, 1.1])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    logp = torch.zeros(6, requires_grad=True)
    loss, stats = grpo.policy_loss(logp, -torch.log(ratio), adv, torch.ones(6))
    # -min(rA, clip(r)A): A>0: -min(1.5,1.28), -min(.5,.8), -1.1 ; A<0: -min(-1.5,-1.28), -min(-.5,-.8), 1.1
    expected = [-1.28, -0.5, -1.1, 1.5, 0.8, 1.1]
    assert loss.item() == pytest.approx(sum(expected), rel=1e-6)
    loss.backward()
    # clipped tokens carry no gradient: d/dlogp (r A) = r A elsewhere
    assert logp.grad.tolist() == pytest.approx([0.0, -0.5, -1.1, 1.5, 0.0, 1.1], rel=1e-6)
    assert stats["clip_high"].tolist() == [1, 0, 0, 0, 0, 0]
    assert stats["clip_low"].tolist() == [0, 0, 0, 0, 1, 0]


def test_k3_kl_hand_computed():
    logp = torch.tensor([math.log(0.5)], requires_grad=True)
    ref = torch.tensor([math.log(0.25)])
    loss, stats = grpo.policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1), ref_logp=ref, kl_coef=2.0)
    k3 = 0.5 - math.log(0.5) - 1  # exp(ref - logp) - (ref - logp) - 1 with ref - logp = log 0.5
    assert stats["kl"].item() == pytest.approx(k3, rel=1e-6)
    assert loss.item() == pytest.approx(2.0 * k3, rel=1e-6)


# ---------------------------------------------------------------------------------------
# loss and gradients against a direct implementation of the formula


def direct_grpo_loss(model, ref, seqs: list[T.Sequence], cfg: T.TrainOptions) -> torch.Tensor:
    """GRPO written out sequence by sequence, token by token, from the full logits."""
    per_seq = []
    for s in seqs:
        ids = torch.tensor([s.token_ids])
        logits = model(input_ids=ids).logits[0].float()
        ref_logits = ref(input_ids=ids).logits[0].float() if ref is not None else None
        terms = []
        for t in range(1, len(s.token_ids)):
            if not s.loss_mask[t]:
                continue
            logp = torch.log_softmax(logits[t - 1], -1)[s.token_ids[t]]
            ratio = torch.exp(logp - s.old_logprobs[t])
            clipped = torch.clamp(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high)
            term = -torch.min(ratio * s.advantage, clipped * s.advantage)
            if ref is not None:
                ref_logp = torch.log_softmax(ref_logits[t - 1], -1)[s.token_ids[t]]
                term = term + cfg.kl_coef * (torch.exp(ref_logp - logp) - (ref_logp - logp) - 1)
            terms.append(term)
        per_seq.append(terms)
    n_tokens = sum(len(t) for t in per_seq)
    if cfg.loss_agg == "token-mean":
        return sum(sum(t) for t in per_seq) / n_tokens
    if cfg.loss_agg == "seq-mean-token-mean":
        return sum(sum(t) / len(t) for t in per_seq) / len(per_seq)
    return sum(sum(t) for t in per_seq) / (len(per_seq) * max(len(t) for t in per_seq))


@pytest.mark.parametrize("agg,kl", [("token-mean", 0.0), ("seq-mean-token-mean", 0.0), ("dr-grpo", 0.0), ("token-mean", 0.5)])
def test_loss_and_gradients_match_direct_formula(policy, tmp_path, agg, kl):
    cfg = T.TrainOptions(loss_agg=agg, kl_coef=kl, micro_batch_tokens=24)  # several micro-batches
    seqs, _ = T.sequences_from_scored(batch(groups=2, size=3, seed=1), cfg)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    direct = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    ref = tiny_llama(tmp_path / "ref", seed=7) if kl else None
    ref_model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32) if ref else None
    # behaviour log-probs around the current ones, so the ratios fall on both sides of the clip range
    with torch.no_grad():
        for i, s in enumerate(seqs):
            logits = model(input_ids=torch.tensor([s.token_ids])).logits[0]
            for t in range(1, len(s.token_ids)):
                if s.loss_mask[t]:
                    shift = [0.6, -0.6, 0.05, -0.05][(i + t) % 4]
                    s.old_logprobs[t] = torch.log_softmax(logits[t - 1], -1)[s.token_ids[t]].item() + shift

    module = grpo.TokenLogprobs(model)
    ref_module = grpo.TokenLogprobs(ref_model) if ref_model is not None else None
    stats = T.accumulate(module, ref_module, seqs, cfg, Accelerator(cpu=True))
    assert T.micro_batches(seqs, cfg.micro_batch_tokens).__len__() > 1
    assert stats["clip_frac_low"] > 0 and stats["clip_frac_high"] > 0

    expected = direct_grpo_loss(direct, ref_model, seqs, cfg)
    expected.backward()
    assert stats["loss"] == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    grads = dict(direct.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-7, msg=name)
    if kl:
        assert stats["kl"] > 0


# ---------------------------------------------------------------------------------------
# the update


def test_zero_variance_batch_performs_no_update(policy, tmp_path, capsys):
    scored = tmp_path / "scored.jsonl"
    records.write_records(scored, batch(zero_variance=True), "scored")
    out = tmp_path / "p1"
    assert main(["train-step", "--policy", str(policy), "--scored", str(scored), "--out", str(out)]) == 0
    assert "no update" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == (policy / "model.safetensors").read_bytes()
    [metrics] = records.read_all(out / "metrics.jsonl", "metrics")
    assert metrics["updated"] is False and metrics["groups_dropped"] == 3 and metrics["groups_kept"] == 0
    assert AutoModelForCausalLM.from_pretrained(out) is not None


def completion_logprob(model_dir: Path, rec: dict) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logp, _ = grpo.TokenLogprobs(model)(torch.tensor([rec["token_ids"]]), torch.ones(1, len(rec["token_ids"]), dtype=torch.long),
                                           torch.tensor([rec["loss_mask"]]))
    return logp.sum().item()


def test_steps_raise_positive_and_lower_negative_completions(policy, tmp_path):
    scored = batch(groups=2, size=4, seed=3)
    adv, _ = grpo.group_advantages([r["reward"] for r in scored], [r["group_id"] for r in scored])
    before = [completion_logprob(policy, r) for r in scored]
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    with torch.no_grad():
        for r in scored:  # on-policy behaviour log-probs, as a rollout would record them
            logp = torch.log_softmax(model(input_ids=torch.tensor([r["token_ids"]])).logits[0], -1)
            r["logprobs"] = [0.0] + [logp[t - 1, x].item() if m else 0.0 for t, (x, m) in enumerate(zip(r["token_ids"], r["loss_mask"], strict=True)) if t > 0]
    cfg = T.TrainOptions(lr=3e-3)
    current = policy
    for step in range(4):
        out = tmp_path / f"p{step + 1}"
        metrics = train_and_save(current, scored, out, cfg, seed=0)
        current = out
    assert metrics["step"] == 4 and metrics["extra"]["optimizer_restored"] is True
    after = [completion_logprob(current, r) for r in scored]
    for a, b0, b1 in zip(adv, before, after, strict=True):
        assert (b1 - b0) * a > 0, (a, b0, b1)


def test_same_inputs_and_seed_give_identical_weights(policy, tmp_path):
    scored = batch(seed=4)
    cfg = T.TrainOptions(lr=1e-3, ppo_epochs=2, mini_batches=2, micro_batch_tokens=80)
    train_and_save(policy, scored, tmp_path / "a", cfg, seed=5)
    train_and_save(policy, scored, tmp_path / "b", cfg, seed=5)
    a, b = weights_of(tmp_path / "a"), weights_of(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], weights_of(policy)["lm_head.weight"])
    state = json.loads((tmp_path / "a" / T.STATE_FILE).read_text())
    assert state["step"] == 4  # 2 epochs x 2 mini-batches


def test_optimizer_state_carries_over_to_the_next_step(policy, tmp_path):
    # two train-steps of one optimizer step each == one train-step of two (ppo_epochs=2) on the same
    # batch, only if the second step resumes AdamW's moments and step count from the checkpoint
    scored = batch(seed=14)
    cfg = T.TrainOptions(lr=1e-2)
    both = train_and_save(policy, scored, tmp_path / "both", T.TrainOptions(lr=1e-2, ppo_epochs=2), seed=0)
    first = train_and_save(policy, scored, tmp_path / "s1", cfg, seed=0)
    second = train_and_save(tmp_path / "s1", scored, tmp_path / "s2", cfg, seed=0)
    assert (first["extra"]["optimizer_restored"], second["extra"]["optimizer_restored"]) == (False, True)
    assert second["step"] == both["step"] == 2
    saved = torch.load(tmp_path / "s2" / T.OPTIMIZER_FILE, weights_only=True)
    assert {int(v["step"]) for v in saved["state"].values()} == {2}
    a, b = weights_of(tmp_path / "both"), weights_of(tmp_path / "s2")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    # a fresh optimizer on the second step (AdamW step 1 again) lands elsewhere
    (tmp_path / "s1" / T.OPTIMIZER_FILE).unlink()
    train_and_save(tmp_path / "s1", scored, tmp_path / "fresh", cfg, seed=0)
    assert not torch.allclose(weights_of(tmp_path / "fresh")["lm_head.weight"], b["lm_head.weight"], rtol=1e-5, atol=1e-6)


def test_micro_batching_does_not_change_the_update(policy, tmp_path):
    scored = batch(seed=6)
    train_and_save(policy, scored, tmp_path / "one", T.TrainOptions(lr=1e-3, micro_batch_tokens=100000), seed=0)
    train_and_save(policy, scored, tmp_path / "many", T.TrainOptions(lr=1e-3, micro_batch_tokens=16), seed=0)
    one, many = weights_of(tmp_path / "one"), weights_of(tmp_path / "many")
    for k in one:
        torch.testing.assert_close(one[k], many[k], rtol=1e-5, atol=1e-6)


def test_shards_partition_deterministically():
    seqs = [T.Sequence(f"s{i}", [1] * (3 + i % 5), [0, 1, 1] + [1] * (i % 5), [0.0] * (3 + i % 5)) for i in range(11)]
    parts = [T.shard(seqs, r, 3) for r in range(3)]
    assert sorted(s.key for p in parts for s in p) == sorted(s.key for s in seqs)
    assert [[s.key for s in p] for p in parts] == [[s.key for s in T.shard(list(reversed(seqs)), r, 3)] for r in range(3)]
    loads = [sum(len(s.token_ids) for s in p) for p in parts]
    assert max(loads) - min(loads) <= 7
    for mb in T.micro_batches(seqs, 20):
        assert len(mb) == 1 or len(mb) * max(len(s.token_ids) for s in mb) <= 20


# ---------------------------------------------------------------------------------------
# CLI, checkpoints, SFT, LoRA


def test_cli_writes_a_loadable_checkpoint_with_metrics(policy, tmp_path):
    (tmp_path / "src").mkdir()
    src = tiny_llama(tmp_path / "src" / "p")
    (src / "chat_template.jinja").write_text("{{ messages }}")
    scored = tmp_path / "scored.parquet"
    records.write_records(scored, batch(seed=8), "scored")
    out = tmp_path / "p1"
    assert main(["--seed", "3", "train-step", "--policy", str(src), "--scored", str(scored), "--out", str(out),
                 "--lr", "1e-3", "--kl-coef", "0.1", "--loss-agg", "seq-mean-token-mean"]) == 0
    assert (out / "chat_template.jinja").read_text() == "{{ messages }}"
    assert (out / T.OPTIMIZER_FILE).exists()
    [metrics] = records.read_all(out / "metrics.jsonl", "metrics")
    assert metrics["updated"] and metrics["step"] == 1 and metrics["groups_kept"] == 3
    assert metrics["kl"] is not None and metrics["grad_norm"] > 0 and metrics["model_tokens"] > 0
    assert records.read_provenance(out / "metrics.jsonl")["seed"] == 3
    AutoModelForCausalLM.from_pretrained(out)
    assert main(["train-step", "--policy", str(src), "--scored", str(scored), "--out", str(out), "--loss-agg", "nope"]) == 2
    assert main(["train-step", "--policy", str(tmp_path), "--scored", str(scored), "--out", str(out)]) == 2
    assert main(["train-step", "--policy", str(src), "--out", str(out), "--mode", "sft"]) == 2


def test_bad_lengths_are_a_user_error(policy, tmp_path):
    bad = batch(groups=1, size=2)
    bad[1]["logprobs"] = bad[1]["logprobs"][:-1]
    with pytest.raises(InputError, match="differ in length"):
        train_and_save(policy, bad, tmp_path / "x", T.TrainOptions())
    with pytest.raises(OptionError):
        train_and_save(policy, bad, tmp_path / "x", T.TrainOptions(adv_scale="bogus"))


def test_sft_raises_the_likelihood_of_reference_tokens(policy, tmp_path):
    rendered = [{"task_id": r["task_id"] + str(r["sample_index"]), "token_ids": r["token_ids"], "loss_mask": r["loss_mask"]}
                for r in batch(groups=2, size=2, seed=9)]
    before = sum(completion_logprob(policy, r) for r in rendered)
    metrics = sft_and_save(policy, rendered, tmp_path / "sft", T.TrainOptions(epochs=5, lr=1e-2, batch_tokens=40), seed=0)
    assert metrics["mode"] == "sft" and metrics["step"] >= 5 and metrics["clip_frac_low"] is None
    losses = metrics["extra"]["losses"]  # one per optimizer step: the learning curve
    assert len(losses) == metrics["extra"]["optimizer_steps"] and metrics["loss"] == pytest.approx(sum(losses) / len(losses))
    assert sum(losses[-3:]) < sum(losses[:3])
    after = sum(completion_logprob(tmp_path / "sft", r) for r in rendered)
    assert after > before + 1.0


def test_default_learning_rates(policy, tmp_path):
    (tmp_path / "rods_policy.json").write_text(json.dumps({"kind": "rods-tiny"}))
    assert T.TrainOptions().learning_rate(tmp_path) == 1e-6  # grpo
    assert T.TrainOptions(mode="sft").learning_rate(tmp_path) == 3e-3  # random init: large steps
    assert T.TrainOptions(mode="sft").learning_rate(policy) == 1e-5  # any other (pretrained) checkpoint
    assert T.TrainOptions(mode="sft", lr=0.1).learning_rate(tmp_path) == 0.1


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    total = 100
    f = [T.lr_factor(i, total, "cosine", 0.05) for i in range(total)]
    assert f[:5] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])  # linear warm-up over 5 steps
    assert f[5] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[5:-1], f[6:], strict=True))  # then never rises
    assert f[5 + 47] == pytest.approx(0.55, abs=0.02)  # half-way through the decay: half-way down
    assert [T.lr_factor(i, total, "constant", 0.05) for i in range(total)] == [1.0] * total
    assert T.lr_factor(0, 1, "cosine", 0.05) == 1.0  # a single step runs at the base rate


def test_sft_follows_the_cosine_schedule_and_grpo_keeps_a_constant_rate(policy, tmp_path):
    rendered = [{"task_id": r["task_id"] + str(r["sample_index"]), "token_ids": r["token_ids"], "loss_mask": r["loss_mask"]}
                for r in batch(groups=2, size=2, seed=9)]
    sft = sft_and_save(policy, rendered, tmp_path / "sft", T.TrainOptions(epochs=10, lr=1e-2, batch_tokens=40, warmup=0.2), seed=0)
    lrs = sft["extra"]["lrs"]
    assert sft["extra"]["schedule"] == "cosine" and len(lrs) == sft["extra"]["optimizer_steps"] >= 10
    assert lrs[0] < 1e-2 and max(lrs) == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-3)
    grpo_metrics = train_and_save(policy, batch(seed=10), tmp_path / "grpo", T.TrainOptions(lr=1e-3, mini_batches=3), seed=0)
    assert grpo_metrics["extra"]["schedule"] == "constant" and grpo_metrics["extra"]["lrs"] == [1e-3] * 3
    with pytest.raises(OptionError, match="--schedule"):
        sft_and_save(policy, rendered, tmp_path / "bad", T.TrainOptions(schedule="linear"), seed=0)
    with pytest.raises(OptionError, match="--warmup"):
        sft_and_save(policy, rendered, tmp_path / "bad", T.TrainOptions(warmup=1.5), seed=0)


def test_lora_update_is_merged_into_plain_weights(policy, tmp_path):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        metrics = train_and_save(policy, batch(seed=10), tmp_path / "lora", T.TrainOptions(lr=1e-2, lora_r=4), seed=0)
    # peft's read of a deprecated transformers attribute is not the user's concern
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)]
    assert metrics["updated"] and metrics["extra"]["lora_r"] == 4
    base, tuned = weights_of(policy), weights_of(tmp_path / "lora")
    assert set(base) == set(tuned)  # merged: no adapter keys, loads as the plain architecture
    assert not torch.equal(base["model.layers.0.self_attn.q_proj.weight"], tuned["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(base["model.embed_tokens.weight"], tuned["model.embed_tokens.weight"])  # not adapted


# ---------------------------------------------------------------------------------------
# scale out: the same command under `accelerate launch` with two CPU processes (gloo)


def launch_two_processes(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 -m rodscli.cli ...` on CPU (torchrun + gloo)."""
    with socket.socket() as s:  # a free rendezvous port: other runs may hold the default one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(cwd / "hf"), "CUDA_VISIBLE_DEVICES": ""}
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(port), "-m", "rodscli.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_gloo_processes_give_the_single_process_update(policy, tmp_path):
    # step 1: 12 sequences, 2 optimizer steps, several micro-batches per process, KL to the input policy
    first = batch(groups=3, size=4, seed=12)
    # step 2 (from step 1's checkpoint, restoring its AdamW state): 3 sequences, one per optimizer
    # step, so one process has nothing to do in every step and runs a zero-weight stand-in
    second = batch(groups=1, size=3, seed=13)
    records.write_records(tmp_path / "first.jsonl", first, "scored")
    records.write_records(tmp_path / "second.jsonl", second, "scored")
    opts1 = ["--lr", "1e-3", "--mini-batches", "2", "--micro-batch-tokens", "40", "--kl-coef", "0.1"]
    opts2 = ["--lr", "1e-3", "--mini-batches", "3"]
    for scored, src, out, opts in (("first.jsonl", policy, "ddp1", opts1), ("second.jsonl", tmp_path / "ddp1", "ddp2", opts2)):
        run = launch_two_processes(["--seed", "4", "train-step", "--policy", str(src), "--scored", scored, "--out", out, *opts], tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stderr.count(f"-> {out}") == 1  # only the main process reports
    cfg1 = T.TrainOptions(lr=1e-3, mini_batches=2, micro_batch_tokens=40, kl_coef=0.1)
    one1 = train_and_save(policy, first, tmp_path / "one1", cfg1, seed=4)
    one2 = train_and_save(tmp_path / "one1", second, tmp_path / "one2", T.TrainOptions(lr=1e-3, mini_batches=3), seed=4)
    for ddp, one, single in (("ddp1", "one1", one1), ("ddp2", "one2", one2)):
        [metrics] = records.read_all(tmp_path / ddp / "metrics.jsonl", "metrics")
        assert metrics["extra"]["processes"] == 2 and single["extra"]["processes"] == 1
        assert metrics["step"] == single["step"] and metrics["loss"] == pytest.approx(single["loss"], rel=1e-5, abs=1e-7)
        assert metrics["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)
        a, b = weights_of(tmp_path / ddp), weights_of(tmp_path / one)
        assert not torch.equal(a["lm_head.weight"], weights_of(policy)["lm_head.weight"])
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert one2["extra"]["optimizer_restored"] and records.read_all(tmp_path / "ddp2" / "metrics.jsonl", "metrics")[0]["extra"]["optimizer_restored"]
    sa = torch.load(tmp_path / "ddp2" / T.OPTIMIZER_FILE, weights_only=True)["state"]
    sb = torch.load(tmp_path / "one2" / T.OPTIMIZER_FILE, weights_only=True)["state"]
    for i in sa:
        torch.testing.assert_close(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], rtol=1e-4, atol=1e-12)


def test_sft_on_every_token_through_the_cli(tiny_policy, tmp_path):
    from rodscli.envs.builtin import seed_tasks

    tasks = tmp_path / "tasks.jsonl"
    records.write_records(str(tasks), seed_tasks()[:2], "task")
    base = ["train-step", "--mode", "sft", "--policy", str(tiny_policy), "--tasks", str(tasks), "--epochs", "1"]
    assert main([*base, "--out", str(tmp_path / "model"), "--schedule", "constant"]) == 0
    assert main([*base, "--out", str(tmp_path / "all"), "--sft-tokens", "all", "--warmup", "0.5"]) == 0
    model, every = (json.loads((tmp_path / d / "metrics.jsonl").read_text()) for d in ("model", "all"))
    assert model["extra"]["schedule"] == "constant" and model["extra"]["sft_tokens"] == "model"
    assert every["extra"]["schedule"] == "cosine" and every["extra"]["sft_tokens"] == "all"
    assert model["tokens"] == every["tokens"]  # the same two conversations
    assert every["model_tokens"] == every["tokens"] - 2 > 5 * model["model_tokens"]  # all but each first token
    assert main([*base, "--out", str(tmp_path / "bad"), "--sft-tokens", "prompt"]) == 2
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("flag", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_a_sharded_launch_is_refused_with_a_clear_error(policy, tmp_path, monkeypatch, flag):
    """`accelerate launch --use_fsdp` sets ACCELERATE_USE_FSDP: accelerate's plugin is refused
    (it would build the optimizer its own way); the error points to --shard full (FSDP2)."""
    monkeypatch.setenv(flag, "true")
    with pytest.raises(OptionError, match="--multi_gpu.*--shard full"):
        train_and_save(policy, batch(seed=10), tmp_path / "out", T.TrainOptions(lr=1e-3), seed=0)
    assert not (tmp_path / "out").exists()


def test_optimizer_state_is_fresh_when_the_mode_changes(policy, tmp_path):
    """auto: GRPO after the SFT warm start starts a fresh AdamW (SFT's moments are not GRPO's);
    GRPO after GRPO, and SFT after SFT, go on with the saved moments; restore and fresh force it."""
    scored = batch(seed=21)
    rendered = [{"token_ids": r["token_ids"], "loss_mask": r["loss_mask"], "task_id": r["rollout_id"]} for r in scored]
    sft = sft_and_save(policy, rendered, tmp_path / "sft", T.TrainOptions(lr=1e-2, epochs=1, batch_tokens=64), seed=0)
    assert sft["extra"]["optimizer_restored"] is False and (tmp_path / "sft" / T.OPTIMIZER_FILE).exists()
    sft2 = sft_and_save(tmp_path / "sft", rendered, tmp_path / "sft2", T.TrainOptions(lr=1e-2, epochs=1, batch_tokens=64), seed=0)
    assert sft2["extra"]["optimizer_restored"] is True
    g1 = train_and_save(tmp_path / "sft", scored, tmp_path / "g1", T.TrainOptions(lr=1e-3), seed=0)
    assert g1["extra"]["optimizer_restored"] is False
    saved = torch.load(tmp_path / "g1" / T.OPTIMIZER_FILE, weights_only=True)
    assert {int(v["step"]) for v in saved["state"].values()} == {1}  # AdamW's count starts again
    assert train_and_save(tmp_path / "g1", scored, tmp_path / "g2", T.TrainOptions(lr=1e-3), seed=0)["extra"]["optimizer_restored"] is True
    forced = train_and_save(tmp_path / "sft", scored, tmp_path / "g1r", T.TrainOptions(lr=1e-3, optimizer_state="restore"), seed=0)
    assert forced["extra"]["optimizer_restored"] is True
    assert not torch.equal(weights_of(tmp_path / "g1")["lm_head.weight"], weights_of(tmp_path / "g1r")["lm_head.weight"])
    fresh = train_and_save(tmp_path / "g1", scored, tmp_path / "g2f", T.TrainOptions(lr=1e-3, optimizer_state="fresh"), seed=0)
    assert fresh["extra"]["optimizer_restored"] is False
    with pytest.raises(OptionError):
        T.TrainOptions(optimizer_state="keep").check()


# ---------------------------------------------------------------------------------------
# the library/CLI line: the library returns an Update, the CLI writes and prints


class Recorder:
    """A Reporter that records what it was given."""

    def __init__(self):
        self.tracked, self.warnings = [], []

    def track(self, items, description, total=None, status=None):
        for item in items:
            yield item
            self.tracked.append((description, status() if status else ""))

    def warn(self, message):
        self.warnings.append(message)


def test_the_library_writes_and_prints_nothing(policy, tmp_path, capsys, monkeypatch):
    from transformers.utils import logging as hf_logging

    from rodscli import console

    monkeypatch.chdir(tmp_path)
    # transformers' bars on (as a Python caller has them), so that turning them off for good would show
    monkeypatch.setattr(hf_logging, "_tqdm_active", True)
    rendered = [{"token_ids": r["token_ids"], "loss_mask": r["loss_mask"], "task_id": r["rollout_id"]} for r in batch(seed=2)]
    sft_and_save(policy, rendered, tmp_path / "sft", T.TrainOptions(lr=1e-2, epochs=1, batch_tokens=64), seed=0)
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    bars, verbosity = hf_logging.is_progress_bar_enabled(), console.VERBOSITY
    assert bars
    reporter = Recorder()
    update = T.train_step(tmp_path / "sft", batch(seed=2), T.TrainOptions(lr=1e-3, mini_batches=2), seed=0, reporter=reporter)
    quiet = T.train_step(policy, batch(zero_variance=True), T.TrainOptions(), seed=0)
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no file, no temp folder
    assert (hf_logging.is_progress_bar_enabled(), console.VERBOSITY) == (bars, verbosity)  # no global setting changed
    # progress and the one warning went to the reporter: two optimizer steps, each with the recent loss
    assert [d for d, _ in reporter.tracked] == ["grpo optimizer steps"] * 2 and reporter.tracked[-1][1].startswith("loss ")
    assert reporter.warnings == [f"not restoring the optimizer state of {tmp_path / 'sft'}: saved by sft, this is grpo (a fresh optimizer)"]
    assert update.metrics["updated"] and update.state["step"] == update.metrics["step"] and not quiet.metrics["updated"]
    assert update.save(tmp_path / "g1") == tmp_path / "g1"  # saving writes the checkpoint, quietly too
    assert records.read_all(tmp_path / "g1" / "metrics.jsonl", "metrics") == [{k: v for k, v in update.metrics.items() if v is not None}]
    quiet.close()  # let go unsaved: nothing written
    for spent in (update, quiet):
        with pytest.raises(RuntimeError, match="already saved or closed"):
            spent.save(tmp_path / "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "g1"])
    assert capsys.readouterr() == ("", "")


def test_the_cli_saves_what_the_library_returns(policy, tmp_path, capsys):
    """The CLI's checkpoint is the library's Update saved: the same weights, optimizer state, train
    state and metrics (timing aside) for the same seed; its report is one line on stderr."""
    records.write_records(tmp_path / "scored.jsonl", batch(seed=5), "scored")
    assert main(["--seed", "2", "train-step", "--policy", str(policy), "--scored", str(tmp_path / "scored.jsonl"),
                 "--out", str(tmp_path / "cli"), "--lr", "1e-3", "--mini-batches", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and f"-> {tmp_path / 'cli'}" in captured.err
    update = T.train_step(policy, batch(seed=5), T.TrainOptions(lr=1e-3, mini_batches=2), seed=2)
    update.save(tmp_path / "lib")
    for name in ("model.safetensors", T.OPTIMIZER_FILE, T.STATE_FILE):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes(), name
    [cli] = records.read_all(tmp_path / "cli" / "metrics.jsonl", "metrics")
    timing = ("time_s", "tokens_per_s")
    assert {k: v for k, v in cli.items() if k not in timing} == {k: v for k, v in update.metrics.items() if k not in timing and v is not None}
    assert records.read_provenance(tmp_path / "cli" / "metrics.jsonl")["seed"] == 2


def test_chat_template_given_to_train_step_is_the_output_checkpoints(tiny_policy, tmp_path):
    """--chat-template FILE trains with FILE and writes it into the checkpoint: a render of the
    output checkpoint (what rollouts of it see) uses FILE with no option, in both modes."""
    from rodscli.envs.builtin import seed_tasks
    from rodscli.policy.base import load_tokenizer

    tasks = tmp_path / "tasks.jsonl"
    records.write_records(str(tasks), seed_tasks()[:2], "task")
    template = (tiny_policy / "chat_template.jinja").read_text().replace("<|im_start|>", "<|im_start|>~", 1)
    assert template != (tiny_policy / "chat_template.jinja").read_text()
    (tmp_path / "mine.jinja").write_text(template)
    # the input keeps its template in tokenizer_config.json, the older place: the output must not contradict the file
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for f in tiny_policy.iterdir():
        (legacy / f.name).write_bytes(f.read_bytes())
    config = json.loads((legacy / "tokenizer_config.json").read_text())
    (legacy / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": (legacy / "chat_template.jinja").read_text()}))
    (legacy / "chat_template.jinja").unlink()
    base = ["train-step", "--mode", "sft", "--policy", str(legacy), "--tasks", str(tasks), "--epochs", "1"]
    assert main([*base, "--out", str(tmp_path / "sft"), "--chat-template", str(tmp_path / "mine.jinja")]) == 0
    out = tmp_path / "sft"
    assert (out / "chat_template.jinja").read_text() == template
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())
    assert load_tokenizer(out).chat_template == template
    task_list = records.read_all(tasks, "task")
    rendered = T.render_tasks(out, task_list)
    assert rendered == T.render_tasks(tiny_policy, task_list, tmp_path / "mine.jinja")
    assert rendered != T.render_tasks(tiny_policy, task_list)
    # without the option the template is copied through; a grpo step with it writes it too
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert load_tokenizer(tmp_path / "plain").chat_template == config.get("chat_template", (tiny_policy / "chat_template.jinja").read_text())
    update = T.train_step(tiny_policy, batch(seed=1), T.TrainOptions(lr=1e-3, chat_template=str(tmp_path / "mine.jinja")), seed=0)
    update.save(tmp_path / "grpo")
    assert load_tokenizer(tmp_path / "grpo").chat_template == template
    # a missing template file is a user error before any work: exit 2, no checkpoint
    assert main([*base, "--out", str(tmp_path / "bad"), "--chat-template", str(tmp_path / "none.jinja")]) == 2
    assert not (tmp_path / "bad").exists()
