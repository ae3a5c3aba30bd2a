"""Tool-call parsing: Hermes/Qwen `<tool_call>` blocks as data, never evaluated."""

from __future__ import annotations

from rodscli.envs.base import PARSE_ERROR
from rodscli.policy.chat import format_tool_call, parse_tool_calls


def test_several_calls_in_one_message_and_the_text_around_them():
    text = "Looking. " + format_tool_call("a", {"x": 1}) + "\n" + format_tool_call("b", {"y": [1, "z"]}) + " ok"
    content, calls = parse_tool_calls(text)
    assert content == "Looking. \n ok"
    assert [(c.name, c.arguments, c.error) for c in calls] == [("a", {"x": 1}, None), ("b", {"y": [1, "z"]}, None)]
    assert calls[0].raw == format_tool_call("a", {"x": 1})


def test_arguments_given_as_a_json_string_are_decoded():
    (call,) = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"k\\": 2}"}</tool_call>')[1]
    assert call.name == "f" and call.arguments == {"k": 2} and call.error is None


def test_malformed_blocks_are_parse_errors_with_a_reason():
    cases = {
        '<tool_call>{"name": "f", "arguments": {"k": </tool_call>': "invalid JSON",
        "<tool_call>[1, 2]</tool_call>": "expected",
        '<tool_call>{"name": 3, "arguments": {}}</tool_call>': "expected",
        '<tool_call>{"name": "f", "arguments": "not json"}</tool_call>': "expected",
        '<tool_call>{"name": "f"': "unclosed",
    }
    for text, reason in cases.items():
        (call,) = parse_tool_calls(text)[1]
        assert call.error == PARSE_ERROR and reason in call.problem, text
        assert call.name is None and call.arguments is None


def test_missing_arguments_mean_no_arguments():
    (call,) = parse_tool_calls('<tool_call>{"name": "f"}</tool_call>')[1]
    assert call.arguments == {} and call.error is None


def test_code_in_a_call_is_never_run():
    (call,) = parse_tool_calls('<tool_call>{"name": "__import__(\'os\').system(\'false\')", "arguments": {}}</tool_call>')[1]
    assert call.name == "__import__('os').system('false')" and call.error is None  # a name, looked up, never evaluated


def test_no_call():
    assert parse_tool_calls("  Just text.  ") == ("Just text.", [])
