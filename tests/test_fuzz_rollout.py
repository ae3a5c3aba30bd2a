"""Fuzz: generated hostile replies (tests/hostile_replies.py) through the whole rollout path,
`rods rollout --backend openai` against a local server, on built-in, BFCL and MCP tasks.

Every run must exit 0 (or 2 with one line when the server itself breaks), the output must
validate, and every limit must hold on every record: --max-tokens, --max-new-tokens per
reply, --max-steps-per-turn, --timeout. No server process or working folder is left behind.
The built-in run alone sends over 1,000 replies (counted by the server and asserted); the
BFCL and MCP runs add about 180 more. The two long runs are marked slow.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from hostile_replies import HostileReplies
from hostile_server import HostileServer, Reply, completion

from rodscli import records
from rodscli.cli import main
from rodscli.envs.base import offered_tools, open_episode, tool_name
from rodscli.envs.builtin import seed_tasks
from rodscli.policy.base import load_tokenizer
from rodscli.policy.chat import ChatFormat

FINISH_REASONS = {"done", "max_steps", "max_tokens", "timeout", "env_error"}


def tool_params(tasks: list[dict]) -> dict[str, dict]:
    """Every tool the tasks offer -> its parameters' types (what the hostile calls aim at)."""
    out: dict[str, dict] = {}
    for task in tasks:
        with open_episode(task) as episode:
            for schema in offered_tools(task, episode, len(task["user_turns"]) - 1):
                props = schema.get("function", schema).get("parameters", {}).get("properties", {})
                out[tool_name(schema)] = {k: (v or {}).get("type") if isinstance((v or {}).get("type"), str) else None
                                          for k, v in props.items()}
    return out


class FuzzServer(HostileServer):
    """Answers every request with a generated hostile reply, as tokens the server may send
    (never more than asked for): the hostility is in what the model says."""

    def __init__(self, fmt: ChatFormat, replies: HostileReplies):
        def answer(body: dict):
            rng = random.Random(body["seed"])
            reply = replies.reply(rng)
            ids = list(reply) if isinstance(reply, list) else fmt.encode(reply)
            if rng.random() < 0.8:
                ids += fmt.eot_ids
            ids = ids[: body["max_tokens"]]
            lps = [-rng.random() * 20 for _ in ids]
            stopped = bool(ids) and ids[-1] in body["stop_token_ids"]
            return completion(ids, lps, "stop" if stopped else "length")

        super().__init__(answer)


def assert_limits(rec: dict, max_tokens: int, max_new: int, max_steps: int, timeout: float) -> None:
    assert rec["finish_reason"] in FINISH_REASONS
    assert len(rec["token_ids"]) <= max_tokens
    assert len(rec["token_ids"]) == len(rec["logprobs"]) == len(rec["loss_mask"])
    run, longest = 0, 0
    for m in rec["loss_mask"]:
        run = run + 1 if m else 0
        longest = max(longest, run)
    assert longest <= max_new
    steps: dict[int, set[int]] = {}
    for call in rec["calls"]:
        steps.setdefault(call["turn"], set()).add(call["step"])
    assert all(max(s) < max_steps for s in steps.values())
    assert rec["timings"]["total"] <= timeout + 5


def children() -> set[int]:
    """Live processes whose parent is this test process."""
    me, out = str(os.getpid()), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def mcp_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("rods-mcp-*")}


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """Working folders go to this test's own temp folder (other test runs share /tmp)."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


def fuzz(tiny_policy, tmp_path, capsys, tasks, group_size, max_tokens, max_new=512, max_steps=6, timeout=120.0):
    tok = load_tokenizer(tiny_policy)
    fmt = ChatFormat(tok)
    task_file, out = tmp_path / "tasks.jsonl", tmp_path / "rollouts.parquet"
    records.write_records(task_file, tasks, "task")
    before_children, before_folders = children(), mcp_folders()
    with FuzzServer(fmt, HostileReplies(tool_params(tasks), len(tok))) as srv:
        argv = ["rollout", "--policy", str(tiny_policy), "--tasks", str(task_file), "--out", str(out),
                "--backend", "openai", "--base-url", srv.url, "-G", str(group_size), "--max-tokens", str(max_tokens),
                "--max-new-tokens", str(max_new), "--max-steps-per-turn", str(max_steps), "--timeout", str(timeout),
                "--concurrency", "4"]
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err
    assert main(["validate", str(out)]) == 0
    rows = records.read_all(out, "rollout")
    assert len(rows) == len(tasks) * group_size
    for rec in rows:
        assert_limits(rec, max_tokens, max_new, max_steps, timeout)
    assert children() <= before_children  # every server process reaped
    assert mcp_folders() <= before_folders  # every working folder removed
    print(f"{srv.requests} replies")
    return rows, srv.requests


@pytest.mark.slow
def test_fuzz_builtin(tiny_policy, tmp_path, capsys):
    tasks = [t for i, t in enumerate(seed_tasks()) if i % 6 == 0][:48]
    rows, n = fuzz(tiny_policy, tmp_path, capsys, tasks, group_size=6, max_tokens=8000, max_new=256)
    calls = [c for r in rows for c in r["calls"]]
    # the generator reaches every kind of outcome, the tools' own code included
    assert {c["error"] for c in calls} >= {"parse_error", "unknown_tool", "bad_arguments", "tool_error"}
    assert n >= 1000  # deterministic: the replies follow the requests' seeds


def test_fuzz_bfcl(tiny_policy, tmp_path, capsys):
    from rodscli.envs import bfcl

    tasks = bfcl.load_tasks()
    tasks = tasks[::67]  # 12 tasks across the four categories and eight simulators
    rows, n = fuzz(tiny_policy, tmp_path, capsys, tasks, group_size=3, max_tokens=16000, max_new=256)
    assert any(c["error"] in (None, "tool_error") for r in rows for c in r["calls"])  # calls ran on the simulators
    assert n >= 150


@pytest.mark.slow
def test_fuzz_mcp(tiny_policy, tmp_path, capsys):
    from test_mcp_env import SQLITE_SERVER, sqlite_task

    if not SQLITE_SERVER.exists():
        pytest.skip("the MCP test server is not installed: run `make install`")
    task = {**sqlite_task(timeout_s=10), "origin": "seed", "parent_id": None, "generation": 0}
    rows, n = fuzz(tiny_policy, tmp_path, capsys, [task], group_size=4, max_tokens=8000, max_new=256,
                   max_steps=5)
    assert any(c["error"] in (None, "tool_error") for r in rows for c in r["calls"])  # calls reached the server
    assert n >= 12


@pytest.mark.parametrize("broken", ["garbage", "too_long", "bad_id", "http_500"])
def test_server_breaking_mid_run_is_exit_2_one_line_no_output(broken, tiny_policy, tmp_path, capsys):
    """The server answers hostile model replies, then breaks at a random request: exit 2,
    one line, no output file, no process left."""
    tok = load_tokenizer(tiny_policy)
    fmt = ChatFormat(tok)
    tasks = [t for i, t in enumerate(seed_tasks()) if i % 24 == 0][:3]
    task_file, out = tmp_path / "tasks.jsonl", tmp_path / "r.jsonl"
    records.write_records(task_file, tasks, "task")
    good = FuzzServer(fmt, HostileReplies(tool_params(tasks), len(tok)))
    good.close()
    bad = {"garbage": Reply(b"\x00\xff{"), "too_long": completion([5] * 5000),
           "bad_id": completion([5, len(tok) + 7]), "http_500": Reply(b"{}", status=500)}[broken]
    count = {"n": 0}
    at = random.Random(broken).randrange(2, 8)

    def answer(body):
        count["n"] += 1
        return bad if count["n"] >= at else good.answer(body)

    with HostileServer(answer) as srv:
        code = main(["rollout", "--policy", str(tiny_policy), "--tasks", str(task_file), "--out", str(out),
                     "--backend", "openai", "--base-url", srv.url, "-G", "2", "--max-tokens", "2500",
                     "--max-new-tokens", "128"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not list(tmp_path.glob("r.*")) and not list(tmp_path.glob(".r.*"))
