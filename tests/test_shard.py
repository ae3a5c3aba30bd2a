"""Sharded training (`--shard full|hybrid`, PyTorch FSDP2) against the single-process update.

Real launches: `torchrun` with two CPU processes (gloo), and two torchrun "nodes" of one
process each on 127.0.0.1 (the multi-node command of docs/scale-out.md). Each must give the
weights one unsharded process gives on the same batch, write a checkpoint transformers
loads, and save the AdamW state sharded so that the next step resumes it on the same or
another number of processes, as if the two steps had run uninterrupted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import batch, sft_and_save, tiny_llama, train_and_save, weights_of
from transformers import AutoModelForCausalLM

from rodscli import records
from rodscli.errors import OptionError
from rodscli.stages import shard as S
from rodscli.stages import train as T


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cwd: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(cwd / "hf"), "CUDA_VISIBLE_DEVICES": ""}


def torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node N -m rodscli.cli ...` on CPU."""
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "rodscli.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=600)


def two_nodes(args: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Two torchrun launches that rendezvous as nodes 0 and 1 of one job (one process each)."""
    port = free_port()
    procs = [subprocess.Popen([str(Path(sys.executable).parent / "torchrun"), "--nnodes", "2", "--node-rank", str(rank),
                               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                               "-m", "rodscli.cli", *args], cwd=cwd, env=_env(cwd), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights_of(a), weights_of(b)
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


def metrics_of(ckpt: Path) -> dict:
    [m] = records.read_all(ckpt / "metrics.jsonl", "metrics")
    return m


@pytest.mark.slow
def test_two_sharded_processes_give_the_single_process_update_and_resume(tmp_path):
    policy = tiny_llama(tmp_path / "p0")
    # 12 sequences, several micro-batches per process (uneven counts: the idle process pads)
    records.write_records(tmp_path / "b.jsonl", batch(groups=3, size=4, seed=12), "scored")
    scored = records.read_all(tmp_path / "b.jsonl", "scored")
    opts = ["--lr", "1e-3", "--micro-batch-tokens", "40"]
    cfg = T.TrainOptions(lr=1e-3, micro_batch_tokens=40)
    run = torchrun(["--seed", "4", "train-step", "--policy", str(policy), "--scored", "b.jsonl", "--out", "f1", "--shard", "full", *opts], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("-> f1") == 1  # only rank 0 reports
    one = train_and_save(policy, scored, tmp_path / "one1", cfg, seed=4)
    sharded = metrics_of(tmp_path / "f1")
    assert sharded["extra"]["processes"] == 2 and sharded["extra"]["shard"] == "full"
    assert sharded["loss"] == pytest.approx(one["loss"], rel=1e-5) and sharded["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
    assert_same_weights(tmp_path / "f1", tmp_path / "one1")
    assert not torch.equal(weights_of(tmp_path / "f1")["lm_head.weight"], weights_of(policy)["lm_head.weight"])
    AutoModelForCausalLM.from_pretrained(tmp_path / "f1")  # a plain HF checkpoint
    assert (tmp_path / "f1" / T.OPTIMIZER_DIR / ".metadata").exists() and not (tmp_path / "f1" / T.OPTIMIZER_FILE).exists()
    assert not list(tmp_path.glob(".f1*"))  # no staging folder left behind
    # each process held about half of the parameters and AdamW moments
    full_bytes, half = one["extra"]["bytes_per_process"], sharded["extra"]["bytes_per_process"]
    assert sum(half.values()) <= 0.55 * sum(full_bytes.values())

    # step 2 from the sharded AdamW state, on 2 processes and on 1: the uninterrupted 2-step run
    both = train_and_save(policy, scored, tmp_path / "both", T.TrainOptions(lr=1e-3, micro_batch_tokens=40, ppo_epochs=2), seed=4)
    run = torchrun(["--seed", "4", "train-step", "--policy", "f1", "--scored", "b.jsonl", "--out", "f2", "--shard", "full", *opts], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    alone = train_and_save(tmp_path / "f1", scored, tmp_path / "g2", T.TrainOptions(lr=1e-3, micro_batch_tokens=40, shard="full"), seed=4)
    unsharded = train_and_save(tmp_path / "f1", scored, tmp_path / "u2", cfg, seed=4)
    for ckpt, m in (("f2", metrics_of(tmp_path / "f2")), ("g2", alone), ("u2", unsharded)):
        assert m["extra"]["optimizer_restored"] and m["step"] == both["step"] == 2, ckpt
        assert_same_weights(tmp_path / ckpt, tmp_path / "both")
    assert alone["extra"]["processes"] == 1
    # a fresh AdamW on step 2 lands elsewhere: the restore mattered
    fresh = tmp_path / "f1_fresh"
    subprocess.run(["cp", "-r", str(tmp_path / "f1"), str(fresh)], check=True)
    subprocess.run(["rm", "-r", str(fresh / T.OPTIMIZER_DIR)], check=True)
    train_and_save(fresh, scored, tmp_path / "x2", T.TrainOptions(lr=1e-3, shard="full"), seed=4)
    assert not torch.allclose(weights_of(tmp_path / "x2")["lm_head.weight"], weights_of(tmp_path / "both")["lm_head.weight"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sharded_sft_gives_the_single_process_update(tiny_policy, tmp_path):
    from rodscli.envs.builtin import seed_tasks

    tasks = seed_tasks()[:3]
    records.write_records(tmp_path / "tasks.jsonl", tasks, "task")
    opts = ["--mode", "sft", "--epochs", "1", "--lr", "1e-3", "--batch-tokens", "4096", "--micro-batch-tokens", "1024"]
    run = torchrun(["--seed", "1", "train-step", "--policy", str(tiny_policy), "--tasks", "tasks.jsonl", "--out", "sft2",
                    "--shard", "full", "--activation-checkpointing", *opts], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    cfg = T.TrainOptions(mode="sft", epochs=1, lr=1e-3, batch_tokens=4096, micro_batch_tokens=1024)
    one = sft_and_save(tiny_policy, T.render_tasks(tiny_policy, tasks), tmp_path / "sft1", cfg, seed=1)
    assert metrics_of(tmp_path / "sft2")["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert_same_weights(tmp_path / "sft2", tmp_path / "sft1")
    assert (tmp_path / "sft2" / "tokenizer.json").read_bytes() == (tiny_policy / "tokenizer.json").read_bytes()


@pytest.mark.slow
def test_two_nodes_hybrid_lora_with_kl(tmp_path):
    """Two torchrun nodes (one process each), --shard hybrid: replicated across the nodes;
    LoRA adapters and a sharded reference policy for the KL term."""
    policy = tiny_llama(tmp_path / "p0")
    records.write_records(tmp_path / "b.jsonl", batch(groups=2, size=4, seed=21), "scored")
    opts = ["--lr", "1e-3", "--mini-batches", "2", "--kl-coef", "0.1", "--lora-r", "4"]
    runs = two_nodes(["--seed", "2", "train-step", "--policy", str(policy), "--scored", "b.jsonl", "--out", "h1", "--shard", "hybrid", *opts], tmp_path)
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:] + runs[1].stderr[-2000:]
    cfg = T.TrainOptions(lr=1e-3, mini_batches=2, kl_coef=0.1, lora_r=4)
    one = train_and_save(policy, records.read_all(tmp_path / "b.jsonl", "scored"), tmp_path / "one", cfg, seed=2)
    m = metrics_of(tmp_path / "h1")
    assert m["extra"]["processes"] == 2 and m["extra"]["shard"] == "hybrid" and m["kl"] == pytest.approx(one["kl"], rel=1e-4, abs=1e-9)
    assert_same_weights(tmp_path / "h1", tmp_path / "one")  # merged LoRA: plain weights
    assert json.loads((tmp_path / "h1" / T.STATE_FILE).read_text())["params"] is None


@pytest.mark.slow
def test_accelerate_launch_shards_too(tmp_path):
    """`accelerate launch --multi_gpu` sets the same environment as torchrun: --shard full works under it."""
    from test_train import launch_two_processes

    policy = tiny_llama(tmp_path / "p0")
    records.write_records(tmp_path / "b.jsonl", batch(groups=2, size=3, seed=5), "scored")
    run = launch_two_processes(["--seed", "1", "train-step", "--policy", str(policy), "--scored", "b.jsonl", "--out", "a1",
                                "--shard", "full", "--lr", "1e-3"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    train_and_save(policy, records.read_all(tmp_path / "b.jsonl", "scored"), tmp_path / "one", T.TrainOptions(lr=1e-3), seed=1)
    assert metrics_of(tmp_path / "a1")["extra"]["processes"] == 2
    assert_same_weights(tmp_path / "a1", tmp_path / "one")


def test_shard_option_is_checked(tmp_path):
    with pytest.raises(OptionError, match="--shard"):
        T.TrainOptions(shard="zero3").check()
    with pytest.raises(OptionError, match="--shard"):
        S.launch("zero3")


def test_lockstep_pads_only_sharded_launches():
    class Ddp:
        pass

    assert S.lockstep([], "filler", Ddp()) == ["filler"]
    assert S.lockstep(["a", "b"], "filler", Ddp()) == ["a", "b"]


def test_one_process_shard_full_equals_unsharded_and_leaves_no_process_group(tmp_path):
    import warnings

    import torch.distributed as dist

    policy = tiny_llama(tmp_path / "p0")
    scored = batch(seed=3)
    train_and_save(policy, scored, tmp_path / "none", T.TrainOptions(lr=1e-3, micro_batch_tokens=40, activation_checkpointing=True), seed=0)
    filters = list(warnings.filters)
    m = train_and_save(policy, scored, tmp_path / "full", T.TrainOptions(lr=1e-3, micro_batch_tokens=40, shard="full"), seed=0)
    assert m["extra"]["processes"] == 1 and not dist.is_initialized()
    assert warnings.filters == filters  # the update silenced FSDP2's view warning inside itself only
    assert_same_weights(tmp_path / "none", tmp_path / "full")
    # a step from an unsharded checkpoint (optimizer.pt) restores its AdamW state into the shards
    a = train_and_save(tmp_path / "none", scored, tmp_path / "none2", T.TrainOptions(lr=1e-3), seed=0)
    b = train_and_save(tmp_path / "none", scored, tmp_path / "full2", T.TrainOptions(lr=1e-3, shard="full"), seed=0)
    assert a["extra"]["optimizer_restored"] and b["extra"]["optimizer_restored"]
    assert_same_weights(tmp_path / "none2", tmp_path / "full2")


# ---------------------------------------------------------------------------------------
# the loop launches it


def test_loop_launches_train_step_under_torchrun_and_serves_each_checkpoint(tmp_path):
    from test_loop import _make

    run = tmp_path / "run"
    plan = _make(run, "NPROC=2", "SHARD=full", "BACKEND=openai", "SERVE_HOOK=serve-it", dry=True)
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()
    train = [ln for ln in lines if " train-step " in ln]
    assert len(train) == 3 and all("torchrun --nproc-per-node 2 --nnodes 1 --standalone -m rodscli.cli" in ln and "--shard full" in ln for ln in train)
    # every rollout and eval first hands its checkpoint to the servers
    roll = [ln for ln in lines if " rollout " in ln]
    assert roll[1].startswith(f"serve-it {run}/iter_000/policy && ") and f"--policy {run}/iter_000/policy" in roll[1]
    assert all(ln.startswith("serve-it ") for ln in lines if " eval " in ln)
    two = _make(run, "NPROC=8", "NNODES=2", "SHARD=hybrid", "LAUNCH=--rdzv-backend c10d --rdzv-endpoint node0:29400 --rdzv-id r1", dry=True)
    step = next(ln for ln in two.stdout.splitlines() if " train-step " in ln and "--mode sft" not in ln)
    assert "--nproc-per-node 8 --nnodes 2 --rdzv-backend c10d --rdzv-endpoint node0:29400 --rdzv-id r1 -m rodscli.cli" in step
    one = _make(run, dry=True).stdout  # the defaults: plain rods, no --shard
    assert "torchrun" not in one and "--shard" not in one


@pytest.mark.slow
def test_make_loop_two_sharded_processes_end_to_end(tmp_path):
    """`make loop ITER=2 NPROC=2 SHARD=full` on CPU: SFT and both GRPO steps on two FSDP2 ranks."""
    from test_loop import _make

    run = tmp_path / "run"
    proc = _make(run, "NPROC=2", "SHARD=full", "ITER=2", "SFT_ARGS=--epochs 1 --lr 3e-3 --sft-tokens all --batch-tokens 1024", timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ckpt in ("setup/policy", "iter_000/policy", "iter_001/policy"):
        m = metrics_of(run / ckpt)
        if m["updated"]:  # a batch whose groups all have zero reward variance passes the weights on
            assert m["extra"]["processes"] == 2 and m["extra"]["shard"] == "full", ckpt
        AutoModelForCausalLM.from_pretrained(run / ckpt)
        assert (run / ckpt / T.OPTIMIZER_DIR / ".metadata").exists()
    assert metrics_of(run / "setup" / "policy")["extra"]["processes"] == 2
    assert (run / "report" / "index.html").exists()


def test_memory_table_formulas():
    """bench/memory.py (the docs' memory table): parameter counts match the published ones
    (Qwen3-4B: 3.6B non-embedding; Qwen3-0.6B: 0.44B), sharding divides the model state."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("memory", Path(__file__).resolve().parents[1] / "bench" / "memory.py")
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    for name, non_embedding in (("Qwen3-4B", 3.6e9), ("Qwen3-0.6B", 0.44e9)):
        m = memory.MODELS[name]
        assert memory.parameters(m) - m["vocab"] * m["hidden"] == pytest.approx(non_embedding, rel=0.03)
    m = memory.MODELS["Qwen3-4B"]
    one, eight = memory.per_gpu(m, 1, "none", 4096, False), memory.per_gpu(m, 8, "full", 4096, False)
    assert one["adamw"] == 8 * memory.parameters(m) and eight["adamw"] == one["adamw"] / 8
    assert eight["activations"] == one["activations"] and one["total"] / 1e9 > 80 > eight["total"] / 1e9
