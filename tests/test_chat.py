"""Tool-call parsing: Hermes/Qwen `<tool_call>` blocks as data, never evaluated; tool listings."""

from __future__ import annotations

import json

from rodscli.envs.base import PARSE_ERROR
from rodscli.policy.chat import TEMPLATE_PATH, ChatFormat, format_tool_call, parse_tool_calls
from rodscli.policy.tiny import _tokenizer_from_texts


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


# ---------------------------------------------------------------------------------------
# tool listings: the system prompt's and a later announcement's are the same lines

RETAIL_TOOL = {"type": "function", "function": {
    "name": "ship_order", "description": "Ship a placed order.",
    "parameters": {"type": "object", "required": ["order_id"], "properties": {
        "order_id": {"type": "string", "description": "The order's id."},
        "carrier": {"type": "string", "enum": ["UPS", "DHL"], "description": "The carrier."}}}}}
# a Qwen2.5-style template: the whole JSON schema of each tool inside <tools>
JSON_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools within <tools></tools> XML tags:\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools><|im_end|>\n{%- endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def _format(template: str | None = None) -> ChatFormat:
    tok = _tokenizer_from_texts(["rods"], 300, TEMPLATE_PATH.read_text())
    if template is not None:
        tok.chat_template = template
    return ChatFormat(tok)


def test_the_tiny_template_lists_a_tool_on_one_line_and_announces_it_the_same_way():
    fmt = _format()
    line = "ship_order(order_id: string, carrier?: string (UPS|DHL)) - Ship a placed order."
    assert fmt.tool_listing([RETAIL_TOOL]) == line
    assert f"<tools>\n{line}\n</tools>" in fmt.render([{"role": "user", "content": "hi"}], tools=[RETAIL_TOOL])
    (message,) = fmt.announce([RETAIL_TOOL])
    assert message["role"] == "system" and message["content"].endswith(f"<tools>\n{line}\n</tools>")


def test_a_json_schema_template_is_announced_in_json_and_a_template_without_tools_falls_back_to_json():
    listing = _format(JSON_TEMPLATE).tool_listing([RETAIL_TOOL, RETAIL_TOOL])
    assert [json.loads(line) for line in listing.split("\n")] == [RETAIL_TOOL, RETAIL_TOOL]
    plain = "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
    assert json.loads(_format(plain).tool_listing([RETAIL_TOOL])) == RETAIL_TOOL
