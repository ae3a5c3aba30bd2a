"""A model's hostile output is data: the cases that used to crash a run (exit 1, every
rollout lost) now become parse_error / bad_arguments / tool_error calls, and the rollout
records they give are written and validate."""

from __future__ import annotations

import pytest
from test_rollout import Scripted

from rodscli import records
from rodscli.cli import main
from rodscli.envs import bfcl
from rodscli.envs.base import (
    MAX_RESULT_CHARS,
    PARSE_ERROR,
    TOOL_ERROR,
    Episode,
    format_result,
)
from rodscli.policy.base import load_tokenizer
from rodscli.policy.chat import MAX_ARGUMENT_DEPTH, parse_tool_calls
from rodscli.stages.rollout import RolloutOptions, rollout

BIG = "100000000000000000000"


def deep(n: int) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("body, problem", [
    ('{"name": "f\\ud800", "arguments": {}}', "surrogate"),
    ('{"name": "f", "arguments": {"a": "x\\udc00"}}', "surrogate"),
    ('{"name": "f", "arguments": {"a": NaN}}', "invalid JSON"),
    ('{"name": "f", "arguments": {"a": 1e999}}', "infinity"),
    ('{"name": "f", "arguments": {"a": ' + deep(300) + "}}", f"deeper than {MAX_ARGUMENT_DEPTH}"),
    ('{"name": "f", "arguments": {"a": ' + deep(900) + "}}", f"deeper than {MAX_ARGUMENT_DEPTH}"),
    ('{"name": "f", "arguments": {"a": ' + deep(5000) + "}}", "invalid JSON"),  # past the parser's own limit
])
def test_unwritable_calls_are_parse_errors(body, problem):
    (call,) = parse_tool_calls(f"<tool_call>{body}</tool_call>")[1]
    assert call.error == PARSE_ERROR and problem in call.problem


def test_arguments_at_the_depth_limit_and_big_numbers_parse():
    nested = "[" * (MAX_ARGUMENT_DEPTH - 1) + "]" * (MAX_ARGUMENT_DEPTH - 1)
    (call,) = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"a": ' + nested + "}}</tool_call>")[1]
    assert call.error is None
    (call,) = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"a": ' + BIG + "}}</tool_call>")[1]
    assert call.error is None and call.arguments == {"a": 1e20}  # past 64 bits: a float, as JSON readers do


class Echo(Episode):
    """An episode whose one tool gives back (or raises) whatever it is set to."""

    def __init__(self, value=None, exc=None):
        self.value, self.exc = value, exc

    def tools(self):
        return [{"type": "function", "function": {"name": "echo", "parameters": {"type": "object", "properties": {}}}}]

    def invoke(self, name, arguments):
        if self.exc is not None:
            raise self.exc
        return self.value

    def snapshot(self):
        return {}


class BadStr:
    def __str__(self):
        raise RuntimeError("no text")


def test_any_tool_result_or_exception_becomes_text():
    assert format_result({"n": 10 ** 30}) == '{"n": 1000000000000000000000000000000}'
    assert format_result("a\ud800b") == "a?b"
    assert format_result({"s": "\udc00"}) == '{"s": "\\udc00"}'
    text = format_result(deep_list(3000))
    assert text.startswith("<a list that cannot be written as JSON")
    assert len(format_result("x" * (MAX_RESULT_CHARS + 10))) < MAX_RESULT_CHARS + 40
    for ep in (Echo({"big": 10 ** 30}), Echo(BadStr()), Echo(exc=ValueError(10 ** 5000)), Echo(exc=ValueError("\ud800")),
               Echo(exc=RecursionError("deep"))):
        out = ep.call("echo", {})
        out.result.encode()  # valid UTF-8
        assert out.error in (None, TOOL_ERROR)
    assert Echo(exc=ValueError(10 ** 5000)).call("echo", {}).result == "Error: ValueError: (message cannot be shown)"


def deep_list(n: int) -> list:
    out: list = []
    for _ in range(n):
        out = [out]
    return out


def test_issue_cases_on_bfcl_are_data_and_the_records_validate(tiny_policy, tmp_path):
    """The issue's crashing replies on a BFCL task: a 2^64+ argument, lone surrogates in a
    name and an argument, arguments 300 and 900 deep; the run ends and its records write."""
    task = next(t for t in bfcl.load_tasks() if t["meta"]["bfcl_id"] == "multi_turn_base_0")
    replies = [
        '<tool_call>{"name": "mkdir", "arguments": {"dir_name": ' + BIG + "}}</tool_call>",
        '<tool_call>{"name": "echo", "arguments": {"content": "\\ud800", "file_name": "a.txt"}}</tool_call>',
        '<tool_call>{"name": "ls\\udfff", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "mkdir", "arguments": {"dir_name": ' + deep(300) + "}}</tool_call>",
        '<tool_call>{"name": "mkdir", "arguments": {"dir_name": ' + deep(900) + "}}</tool_call>",
        '<tool_call>{"name": "echo", "arguments": {"content": "ok", "file_name": "b.txt"}}</tool_call>',
        "Done.",
    ]
    tok = load_tokenizer(tiny_policy)
    opts = RolloutOptions(group_size=1, max_new_tokens=2048, max_tokens=30000, max_steps_per_turn=10)
    (rec,) = rollout([task], Scripted(tok, replies), opts)
    errors = [c["error"] for c in rec["calls"]][:6]
    assert errors[0] in ("bad_arguments", "tool_error", None)
    assert errors[1:5] == [PARSE_ERROR] * 4 and errors[5] is None
    for name in ("r.jsonl", "r.parquet"):
        records.write_records(tmp_path / name, [rec], "rollout")
        assert main(["validate", str(tmp_path / name)]) == 0


def test_train_step_refuses_token_ids_outside_the_vocabulary(tmp_path, capsys):
    """Records holding an id the model has no embedding for (from another model, or a
    server that sent one): one line naming the rollout, exit 2, no checkpoint."""
    from test_train import VOCAB, batch, tiny_llama

    policy = tiny_llama(tmp_path / "p0")
    capsys.readouterr()  # saving the test model prints its own progress
    rows = batch(seed=4)
    rows[5]["token_ids"][2] = VOCAB + 3
    scored, out = tmp_path / "scored.jsonl", tmp_path / "p1"
    records.write_records(scored, rows, "scored")
    assert main(["train-step", "--policy", str(policy), "--scored", str(scored), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"token id {VOCAB + 3} is outside the model's vocabulary" in err, err
    assert rows[5]["rollout_id"] in err and not out.exists()
