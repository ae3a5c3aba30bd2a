"""MCP servers that misbehave or leak, against real servers: mcp-server-git (installed by
`make install` in its own virtualenv, like mcp-server-sqlite), started in a fresh git
repository per episode; and small shell commands for servers that hang or never start.

Covered: results normalized for the per-episode folder (replays compare equal), the
server's log outside its sandbox with its last lines in the error, a failed reference
replay failing `score` loudly, and the allow-list of task commands."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from rodscli import records
from rodscli.cli import main
from rodscli.envs.base import ENV_ERROR, TOOL_ERROR, open_episode, replay_reference
from rodscli.envs.mcp import ALLOW_ENV, command_allowed
from rodscli.errors import InputError
from rodscli.stages.score import score
from rodscli.stages.tasks import replay_tasks

ROOT = Path(__file__).resolve().parents[1]
GIT_SERVER = ROOT / ".venv" / "mcp-servers" / "git" / "bin" / "mcp-server-git"
needs_git = pytest.mark.skipif(not GIT_SERVER.exists() or not shutil.which("git"),
                               reason=f"needs git and {GIT_SERVER} (run `make install`)")
# commits with fixed names and dates, so that their hashes replay
GIT_ENV = {k: "rods" for k in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME")} | {
    "GIT_AUTHOR_EMAIL": "rods@example.org", "GIT_COMMITTER_EMAIL": "rods@example.org",
    "GIT_AUTHOR_DATE": "1767225600 +0000", "GIT_COMMITTER_DATE": "1767225600 +0000"}


def git_task(reference: list[list[dict]], init: bool = True, timeout_s: float = 20.0, **config) -> dict:
    """A task on mcp-server-git in the episode's folder; `init` makes it a repository first
    (a shell command: task files are code, see docs/trust-and-limits.md)."""
    command = (["sh", "-c", f'git init -q . && exec "{GIT_SERVER}" --repository "$PWD"'] if init
               else [str(GIT_SERVER), "--repository", "{workdir}"])
    return {
        "id": "mcp-git-test", "env": "mcp", "domain": "git", "skill": "base", "origin": "seed",
        "parent_id": None, "generation": 0,
        "env_config": {"command": command, "env": GIT_ENV, "timeout_s": timeout_s,
                       "state_calls": [{"name": "git_log", "arguments": {"repo_path": "{workdir}"}}], **config},
        "initial_state": {"files": {"notes.txt": "hello\n"}},
        "user_turns": ["commit the notes"] * len(reference), "tools": [], "withheld": [], "reference": reference,
    }


ADD_AND_COMMIT = [[{"name": "git_add", "arguments": {"repo_path": "{workdir}", "files": ["notes.txt"]}},
                   {"name": "git_commit", "arguments": {"repo_path": "{workdir}", "message": "notes"}}]]
# results that name the episode's folder: an error about a path outside the repository
OUTSIDE = [[{"name": "git_status", "arguments": {"repo_path": "/"}},
            {"name": "git_add", "arguments": {"repo_path": "{workdir}", "files": ["missing.txt"]}}]]


@needs_git
def test_results_name_the_folder_as_workdir_and_replays_compare_equal():
    task = git_task([ADD_AND_COMMIT[0] + OUTSIDE[0]])
    a, b = replay_reference(task), replay_reference(task)
    assert a.results == b.results and a.state_hashes == b.state_hashes
    status, commit, outside, missing = a.results[0]
    assert "outside the allowed repository '{workdir}'" in outside and "rods-mcp-" not in outside
    assert a.errors[0] == [None, None, TOOL_ERROR, TOOL_ERROR]
    assert "committed successfully" in commit
    report = replay_tasks([git_task(ADD_AND_COMMIT)])  # `rods tasks replay`: two replays agree, commit hash too
    assert not report.failures, report.failures
    with open_episode(task) as ep:
        assert not list(Path(ep.workdir).glob("**/*server-stderr*"))  # the log is not in the sandbox
        assert Path(ep.log_path).parent == Path(ep.workdir).parent
        assert ep.call("git_status", {"repo_path": "{workdir}"}).ok  # {workdir} in arguments is the folder
        log = Path(ep.log_path)
    assert not log.exists() and not log.parent.exists()  # removed at close, with the folder


@needs_git
def test_handshake_failure_says_the_servers_own_words():
    """Without a repository the server logs why and exits: that reason is in the error, not
    'unhandled errors in a TaskGroup'."""
    task = git_task([[]], init=False)
    with open_episode(task) as ep:
        assert ep.failed
        assert "not a valid Git repository" in ep.failure and "TaskGroup" not in ep.failure
        assert "{workdir}" in ep.failure and "rods-mcp-" not in ep.failure
        out = ep.call("git_status", {"repo_path": "{workdir}"})
        assert out.error == ENV_ERROR and "not a valid Git repository" in out.result


def test_server_hung_at_start_up_reports_its_log_not_our_kill_signal():
    script = "import sys, time; print('loading a very large index', file=sys.stderr, flush=True); time.sleep(60)"
    task = {"id": "hang", "env": "mcp", "env_config": {"command": [sys.executable, "-c", script], "timeout_s": 1}}
    t = time.monotonic()
    with open_episode(task) as ep:
        assert ep.failed
        assert "handshake within 3s" in ep.failure and "loading a very large index" in ep.failure
        assert "signal" not in ep.failure
    assert time.monotonic() - t < 10


@needs_git
def test_score_fails_loudly_when_the_reference_replay_fails(tmp_path, capsys):
    """The server cannot start for the reference replay either: scoring that task stops
    with one line naming it and the server's reason, instead of crediting broken rollouts."""
    task = git_task([[{"name": "git_status", "arguments": {"repo_path": "{workdir}"}}]], init=False)
    rollout = {"rollout_id": "r/0", "task_id": task["id"], "group_id": "r", "sample_index": 0, "policy_id": "p",
               "messages": [], "calls": [], "token_ids": [0], "logprobs": [0.0], "loss_mask": [0],
               "finish_reason": "env_error", "n_user_turns": 1, "n_turns_reached": 1,
               "turn_state_hashes": [""], "n_calls": 0}
    with pytest.raises(InputError, match="reference replay of task 'mcp-git-test' failed.*not a valid Git repository"):
        list(score([rollout], [task]))
    tasks, rolls, out = tmp_path / "t.jsonl", tmp_path / "r.jsonl", tmp_path / "s.jsonl"
    records.write_records(tasks, [task], "task")
    records.write_records(rolls, [rollout], "rollout")
    assert main(["score", "--rollouts", str(rolls), "--tasks", str(tasks), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a valid Git repository" in err
    assert not out.exists()


def test_allow_list_of_commands(tmp_path, monkeypatch, capsys):
    task = {"id": "t", "env": "mcp", "env_config": {"command": [sys.executable, "-c", "pass"], "timeout_s": 1}}
    exe = os.path.realpath(sys.executable)
    assert command_allowed(sys.executable, [sys.executable])
    assert command_allowed("sh", ["sh"]) and command_allowed("sh", [os.path.realpath("/bin/sh")])
    assert command_allowed(sys.executable, [os.path.dirname(exe) + "/*"])  # a pattern on the resolved path
    assert not command_allowed(sys.executable, ["node", "/opt/mcp/*"])
    monkeypatch.setenv(ALLOW_ENV, os.pathsep.join(["node", "/opt/mcp/*"]))
    with pytest.raises(InputError, match="is not allowed"):
        open_episode(task)
    # the CLI's global option adds to the list; a task file with another command is refused before it runs
    monkeypatch.delenv(ALLOW_ENV)
    marker = tmp_path / "ran"
    evil = {**task, "env_config": {"command": ["sh", "-c", f"touch {marker}"], "timeout_s": 1},
            "domain": "x", "skill": "base", "origin": "seed", "parent_id": None, "generation": 0,
            "initial_state": {}, "user_turns": ["u"], "tools": [], "withheld": [], "reference": [[]]}
    records.write_records(tmp_path / "t.jsonl", [evil], "task")
    code = main(["--allow-command", str(GIT_SERVER), "tasks", "replay", str(tmp_path / "t.jsonl")])
    err = capsys.readouterr()
    assert code != 0 and "'sh' is not allowed" in err.out + err.err
    assert not marker.exists()


MEMORY_SERVER = ROOT / ".venv" / "mcp-servers" / "memory" / "node_modules" / ".bin" / "mcp-server-memory"


def memory_task(memory_file: str) -> dict:
    entity = {"name": "rods", "entityType": "project", "observations": ["trains agents"]}
    return {
        "id": "mcp-memory-test", "env": "mcp", "domain": "memory", "skill": "base", "origin": "seed",
        "parent_id": None, "generation": 0,
        "env_config": {"command": [str(MEMORY_SERVER)], "env": {"MEMORY_FILE_PATH": memory_file}, "timeout_s": 20,
                       "state_calls": [{"name": "read_graph", "arguments": {}}]},
        "initial_state": {}, "user_turns": ["remember rods"], "tools": [], "withheld": [],
        "reference": [[{"name": "create_entities", "arguments": {"entities": [entity]}}]],
    }


@pytest.mark.skipif(not MEMORY_SERVER.exists(), reason="npm's server-memory is not installed (make install with npm)")
def test_state_kept_outside_the_folder_is_caught_by_replay_and_fixed_by_config(tmp_path):
    """server-memory keeps its graph in MEMORY_FILE_PATH (by default a file in its own
    package): a path outside the episode folder is shared by every episode. `rods tasks
    replay` catches it (the second replay starts from the first one's graph); pointing
    the file into {workdir} makes every episode its own."""
    shared = tmp_path / "shared-memory.jsonl"
    report = replay_tasks([memory_task(str(shared))])
    assert shared.exists()  # state outside the folder, left behind
    assert [f.task_id for f in report.failures] == ["mcp-memory-test"], report.failures
    assert "second replay" in report.failures[0].message
    report = replay_tasks([memory_task("{workdir}/memory.jsonl")])
    assert not report.failures, report.failures
