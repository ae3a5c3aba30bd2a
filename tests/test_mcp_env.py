"""MCP adapter against a real stateful server: mcp-server-sqlite, installed by `make install`
in its own virtualenv (it needs mcp<2), started by path with a fresh --db-path per episode."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from rodscli.envs.base import BAD_ARGUMENTS, ENV_ERROR, UNKNOWN_TOOL, open_episode, replay_reference
from rodscli.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SQLITE_SERVER = ROOT / ".venv" / "mcp-servers" / "sqlite" / "bin" / "mcp-server-sqlite"

pytestmark = pytest.mark.skipif(
    not SQLITE_SERVER.exists(),
    reason=f"the MCP test server is not installed ({SQLITE_SERVER}): run `make install`",
)

TABLES = "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
ITEMS = "SELECT id, name FROM items ORDER BY id"


def sqlite_task(timeout_s: float = 20.0, **extra) -> dict:
    return {
        "id": "mcp-sqlite-test",
        "env": "mcp",
        "domain": "sqlite",
        "skill": "base",
        "env_config": {
            "command": [str(SQLITE_SERVER)],
            "args": ["--db-path", "{workdir}/db.sqlite"],
            "setup_calls": [{"name": "create_table", "arguments": {"query": "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"}}],
            "state_calls": [{"name": "read_query", "arguments": {"query": TABLES}},
                            {"name": "read_query", "arguments": {"query": ITEMS}}],
            "timeout_s": timeout_s,
            **extra,
        },
        "initial_state": {},
        "user_turns": ["add apples", "add pears"],
        "tools": [],
        "withheld": [],
        "reference": [
            [{"name": "write_query", "arguments": {"query": "INSERT INTO items (name) VALUES ('apple')"}}],
            [{"name": "write_query", "arguments": {"query": "INSERT INTO items (name) VALUES ('pear')"}},
             {"name": "read_query", "arguments": {"query": "SELECT count(*) AS n FROM items"}}],
        ],
    }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); count it as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_tools_state_isolation_crash_and_recovery():
    """One server start per episode is slow (seconds): this test walks the whole life of
    three episodes — tools, state via state_calls, isolation, a killed server, a fresh one."""
    task = sqlite_task()
    a = open_episode(task)
    b = open_episode(task)
    try:
        names = {t["function"]["name"] for t in a.tools()}
        assert {"read_query", "write_query", "create_table", "list_tables", "describe_table"} <= names
        schema = next(t for t in a.tools() if t["function"]["name"] == "read_query")
        assert schema["type"] == "function" and schema["function"]["parameters"]["required"] == ["query"]

        empty = a.snapshot()
        assert empty["calls"][0] == {"name": "read_query", "result": "[{'name': 'items'}]"}  # the setup call ran
        assert empty["calls"][1] == {"name": "read_query", "result": "[]"}
        assert b.snapshot() == empty

        out = a.call("write_query", {"query": "INSERT INTO items (name) VALUES ('apple')"})
        assert out.ok and "affected_rows" in out.result
        assert a.call("read_query", {"query": ITEMS}).result == "[{'id': 1, 'name': 'apple'}]"
        assert a.snapshot()["calls"][1]["result"] == "[{'id': 1, 'name': 'apple'}]"
        assert b.snapshot() == empty  # the other episode's database is untouched
        assert a.workdir != b.workdir and a.pid != b.pid

        # model mistakes stay data
        assert a.call("drop_everything", {}).error == UNKNOWN_TOOL
        assert a.call("read_query", {}).error == BAD_ARGUMENTS
        assert "Only SELECT" in a.call("read_query", {"query": "DELETE FROM items"}).result

        # the server dies mid-episode: a failed episode with a clear error
        os.kill(a.pid, signal.SIGKILL)
        out = a.call("read_query", {"query": ITEMS})
        assert out.error == ENV_ERROR and a.failed
        assert "MCP server" in out.result and ("closed" in out.result or "broke" in out.result), out.result
        again = a.call("read_query", {"query": ITEMS})
        assert again.error == ENV_ERROR  # stays failed, answers at once
        assert all("error" in c for c in a.snapshot()["calls"])

        # the other episode is unaffected
        assert b.call("write_query", {"query": "INSERT INTO items (name) VALUES ('pear')"}).ok
        assert b.snapshot()["calls"][1]["result"] == "[{'id': 1, 'name': 'pear'}]"
    finally:
        a.close()
        b.close()
    for ep in (a, b):
        assert not alive(ep.pid), "close() must reap the server"
        assert not Path(ep.workdir).exists()

    # the next episode works, and the reference replay is deterministic
    first = replay_reference(task)
    assert first.ok, first.errors
    assert first.results[1][1] == "[{'n': 2}]"
    assert replay_reference(task).state_hashes == first.state_hashes


def test_hanging_call_times_out_and_fails_the_episode():
    task = sqlite_task(timeout_s=4.0, state_files=["notes/*.txt"])
    task["initial_state"] = {"files": {"notes/a.txt": "hello"}}
    ep = open_episode(task)
    try:
        assert not ep.failed
        assert ep.snapshot()["files"] == {"notes/a.txt": "hello"}  # files in the working dir are state too
        # a recursive CTE that never ends keeps the server busy: the call must time out
        # (the server only accepts statements that start with SELECT, so the CTE is a subquery)
        start = time.monotonic()
        out = ep.call("read_query", {"query": "SELECT count(*) FROM (WITH RECURSIVE c(x) AS "
                                              "(SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c)"})
        took = time.monotonic() - start
        assert out.error == ENV_ERROR and ep.failed
        assert "did not answer within 4s" in out.result
        assert took < 4.0 + 3.0
    finally:
        ep.close()
    assert not alive(ep.pid)


def test_bad_configs_are_user_errors(tmp_path):
    with pytest.raises(InputError, match="env_config.command"):
        open_episode({"id": "x", "env": "mcp", "env_config": {}, "initial_state": {}})
    with pytest.raises(InputError, match="cannot start MCP server"):
        open_episode({"id": "x", "env": "mcp", "env_config": {"command": [str(tmp_path / "no-such-server")]},
                      "initial_state": {}})
    task = sqlite_task()
    task["initial_state"] = {"files": {"../escape.txt": "x"}}
    with pytest.raises(InputError, match="outside the working directory"):
        open_episode(task)
