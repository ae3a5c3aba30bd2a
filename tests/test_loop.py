"""`make loop`: the iteration chain as file targets, and resuming after kill -9.

The slow test runs the real stages on the tiny policy with tiny settings: a 2-iteration run
straight through, and the same run killed (SIGKILL to make's whole process group) at a
random moment of iteration 1 and restarted; both must end with the same buffer records, the
same next batch and the same checkpoint weights. The starting policy is made once and given
as POLICY (both runs link it). The training tasks are those whose first user turn needs no
call: the tiny policy passes that turn and fails the others, so every group lands in the
boundary zone and the run synthesizes candidates and injects them into the buffer: the
buffer the two runs must agree on holds synthetic tasks and their lineage. (The untrained
policy's groups have zero reward variance, so no GRPO update happens here; that an update is
deterministic is tests/test_train.py's job.)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from rodscli import records

REPO = Path(__file__).resolve().parents[1]
# tiny settings: a few tasks, short episodes; -o keeps make from reinstalling the venv
# (the tiny policy's prompts, tool list included, are ~600 tokens: MAX_TOKENS leaves room for
# several short replies)
TINY = [
    "ITER=2", "BATCH=3", "G=4", "MAX_NEW_TOKENS=24", "MAX_TOKENS=2048", "TOP_M=2", "PER_SEED=1",
    "SFT_TASKS_FILTER=head -6", "HELDOUT_TASKS_CMD=$(RODS) tasks builtin --out - | awk 'NR % 240 == 0'",
    "EVAL_EVERY=100", "RODS_FLAGS=--quiet",
]
# the resume test: a given starting policy, tasks whose first user turn has an empty reference
RESUME = ["SFT=off", "TRAIN_TASKS_CMD=$(RODS) tasks builtin --out - | grep -F '\"reference\":[[],'"]


def _make(run: Path, *extra: str, dry: bool = False, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = ["make", "--no-print-directory", "-C", str(REPO), "-o", "install",
           *(["-n"] if dry else []), "loop", f"RUN={run}", "PIPELINE=demo", *TINY, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if kw.pop("background", False):
        return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)


def _weights_hash(ckpt: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    files = sorted(ckpt.glob("*.safetensors")) or sorted(ckpt.glob("*.bin"))
    assert files, f"no weights in {ckpt}"
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def test_plan_chains_iterations_through_files(tmp_path):
    """The dry run lists every stage of every iteration, each reading the previous one's files."""
    run = tmp_path / "run"
    proc = _make(run, "ITER=3", "EVAL_EVERY=2", dry=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()

    def stage_lines(stage: str) -> list[str]:
        return [ln for ln in lines if f" {stage} " in ln and "rods" in ln]

    assert len(stage_lines("rollout")) == 3 and len(stage_lines("synthesize")) == 3
    # iteration 2 starts from iteration 1's policy and next batch, with its own seed
    roll2 = stage_lines("rollout")[2]
    assert f"--policy {run}/iter_001/policy" in roll2 and f"--tasks {run}/iter_001/next_batch.parquet" in roll2
    seeds = [ln.split("--seed ")[1].split()[0] for ln in stage_lines("rollout")]
    assert len(set(seeds)) == 3
    assert f"--previous {run}/iter_000/groups.parquet" in stage_lines("detect")[1]
    # held-out eval of the start and after iterations 2 (EVAL_EVERY) and 3 (the last)
    evals = stage_lines("eval")
    assert [ln.split("--iteration ")[1].split()[0] for ln in evals] == ["0", "2", "3"]
    # checkpoints are written under a temp name and renamed
    assert any(f"mv {run}/iter_002/policy.tmp {run}/iter_002/policy" in ln for ln in lines)


def test_static_switches_synthesis_and_retirement_off(tmp_path):
    proc = _make(tmp_path / "s", "PIPELINE=static", dry=True)
    assert proc.returncode == 0, proc.stderr
    synth = [ln for ln in proc.stdout.splitlines() if " synthesize " in ln]
    merge = [ln for ln in proc.stdout.splitlines() if " merge-buffer " in ln]
    assert synth and all("--per-seed 0" in ln for ln in synth)
    assert all("--top-m 0" in ln for ln in proc.stdout.splitlines() if " detect " in ln)
    assert all("--floor 1.0" in ln and "--no-retire" in ln for ln in merge)


def test_settings_override_on_the_command_line(tmp_path):
    proc = _make(tmp_path / "r", "G=5", "LR=3e-3", dry=True)
    assert proc.returncode == 0, proc.stderr
    assert "--group-size 5" in proc.stdout and "--lr 3e-3" in proc.stdout


def _rods(*args: str) -> None:
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "rods"), "--quiet", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def start_policy(tmp_path_factory) -> Path:
    """The embedded tiny policy, made once for both runs."""
    out = tmp_path_factory.mktemp("start") / "init"
    _rods("--seed", "0", "init-policy", "--out", str(out))
    return out


@pytest.mark.slow
def test_killed_loop_resumes_to_the_same_result(tmp_path, start_policy):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    given = [*RESUME, f"POLICY={start_policy}"]
    proc = _make(straight, *given, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final_buffer = straight / "iter_001" / "buffer.parquet"
    assert final_buffer.exists() and (straight / "iter_001" / "policy").is_dir()
    assert (straight / "report" / "index.html").exists()
    # the buffer went through synthesis: candidates of iteration 0 are active in iteration 1's buffer
    buffer = records.read_all(final_buffer, "buffer")
    assert records.read_all(straight / "iter_000" / "candidates.parquet", "task")
    assert any(e["origin"] == "synthetic" and e["status"] == "active" for e in buffer)

    # the same run, killed at a random moment of iteration 1 (after its first file appeared)
    bg = _make(killed, *given, background=True)
    deadline = time.time() + 900
    while not (killed / "iter_001").exists():
        assert bg.poll() is None, f"make ended before iteration 1: {bg.stderr.read()[-3000:]}"
        assert time.time() < deadline
        time.sleep(0.2)
    time.sleep(random.uniform(0.0, 3.0))
    os.killpg(bg.pid, signal.SIGKILL)
    bg.wait()
    assert not (killed / "iter_001" / "buffer.parquet").exists() or not (killed / "iter_001" / "policy").exists(), \
        "the run finished before it was killed: nothing was tested"

    proc = _make(killed, *given, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = "iter_001"
    assert buffer == records.read_all(killed / last / "buffer.parquet", "buffer")
    assert records.read_all(straight / last / "next_batch.parquet", "task") == records.read_all(killed / last / "next_batch.parquet", "task")
    assert _weights_hash(straight / last / "policy") == _weights_hash(killed / last / "policy")
    # a finished run is up to date: make has no stage left to run, only the report
    again = _make(killed, *given, dry=True)
    assert [ln for ln in again.stdout.splitlines() if "rods" in ln and " report " not in ln] == []


def test_second_sft_stage_goes_on_from_the_first(tmp_path):
    """SFT_MORE=on: setup/sft_first is the first stage, setup/policy a second SFT on other tasks from it."""
    run = tmp_path / "run"
    plan = _make(run, dry=True).stdout.splitlines()
    plain = [ln for ln in plan if "--mode sft" in ln]
    assert len(plain) == 1 and f"--out {run}/setup/policy.tmp" in plain[0]

    def grpo_steps(lines: list[str]) -> list[str]:
        return [ln.rstrip() for ln in lines if " train-step " in ln and "--mode sft" not in ln]

    assert grpo_steps(plan) and all(ln.endswith("--lr 1e-5") for ln in grpo_steps(plan))

    more = ["SFT_MORE=on", "SFT_MORE_TASKS_CMD=$(RODS) --quiet tasks builtin --out - | tail -2",
            "SFT_MORE_ARGS=--epochs 1 --lr 1e-3 --sft-tokens model --batch-tokens 2048", "SFT_TASKS_FILTER=head -2"]
    dry = _make(run, *more, dry=True)
    assert dry.returncode == 0, dry.stderr
    first, second = [ln for ln in dry.stdout.splitlines() if "--mode sft" in ln]
    assert f"--tasks {run}/setup/sft_tasks.jsonl --out {run}/setup/sft_first.tmp" in first
    assert f"--policy {run}/setup/sft_first --tasks {run}/setup/sft_more_tasks.jsonl --out {run}/setup/policy.tmp" in second
    assert "--sft-tokens model" in second and "--sft-tokens model" not in first
    assert f"--policy {run}/setup/policy " in next(ln for ln in dry.stdout.splitlines() if " rollout " in ln)
    # the demo's GRPO rate follows the start: 1e-6 from the longer warm start (a fresh AdamW's
    # 1e-5 would take the steps of the old restored one's 1e-4, which undid it)
    grpo = grpo_steps(dry.stdout.splitlines())
    assert grpo and all(ln.endswith("--lr 1e-6") for ln in grpo)

    # the two stages for real (tiny: two tasks each): both checkpoints exist, the second trained on from the first
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "-o", "install", f"{run}/setup/policy",
                           f"RUN={run}", "PIPELINE=demo", *TINY, *more], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len((run / "setup" / "sft_more_tasks.jsonl").read_text().splitlines()) == 2
    assert _weights_hash(run / "setup" / "sft_first") != _weights_hash(run / "setup" / "policy")
    first_state, state = (json.loads((run / "setup" / d / "train_state.json").read_text()) for d in ("sft_first", "policy"))
    assert state["step"] > first_state["step"] and state["optimizer_restored"]  # the optimizer went on, too
    assert not list((run / "setup").glob("*.tmp"))
