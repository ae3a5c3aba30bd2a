"""Generated hostile model replies: tool calls with bad names, arguments, nesting, numbers,
encodings and block structure, plus raw token-id noise (tests/test_fuzz_rollout.py).

`HostileReplies(tools, seed).reply(rng)` is one reply's text, or a list of token ids for
noise; `tools` maps each tool name the task offers to its parameters' JSON types, so that some
calls reach the tools themselves, with plausible or hostile values."""

from __future__ import annotations

import json
import random

# JSON fragments a hostile model may write; lone surrogates and non-finite numbers are
# written as the escapes/literals a model would produce, not as Python values
NUMBERS = ["100000000000000000000", "-1000000000000000000000000000000", "18446744073709551616", "1e999", "-1e999",
           "NaN", "Infinity", "-0", "1e-400", "9" * 400, "0.1e309", "123456789012345678901234567890.5", "0x10"]
STRINGS = [r'"\ud800"', r'"a\udc00b"', r'"\u0000"', '"{workdir}"', '"../../../../etc/passwd"', '"/tmp"',
           '"</tool_call>"', '"<tool_call>"', '"__import__(\'os\').system(\'touch /tmp/rods-pwned\')"',
           '"\u202e\u0301\ufeff"', '"名前"', '"' + "x" * 300 + '"', '""', r'"\\"', '"%s%n"', '"${HOME}"',
           '"; rm -rf / #"', r'"\ud83d\ude00"', '"\\n\\r\\t"']
NAMES = ["", " ", "x" * 200, "名前", "\\ud800", "a\\udc00", "__import__", "eval", "../tool", "tool\\u0000",
         "<tool_call>", "None", "constructor", "__class__", "_private", "close", "snapshot", "invoke"]
DEPTHS = [1, 2, 31, 32, 33, 40, 64, 256, 300, 900]


def nested(depth: int, rng: random.Random) -> str:
    """A JSON value `depth` containers deep, lists and objects mixed."""
    kinds = [rng.choice("[{") for _ in range(depth)]
    opening = "".join("[" if k == "[" else '{"k": ' for k in kinds)
    closing = "".join("]" if k == "[" else "}" for k in reversed(kinds))
    return opening + "1" + closing


class HostileReplies:
    def __init__(self, tools: dict[str, dict[str, str | None]], vocab_size: int):
        self.tools = tools or {"t": {}}
        self.vocab_size = vocab_size

    def value(self, rng: random.Random) -> str:
        kind = rng.randrange(6)
        if kind == 0:
            return rng.choice(NUMBERS)
        if kind == 1:
            return rng.choice(STRINGS)
        if kind == 2:
            return nested(rng.choice(DEPTHS), rng)
        if kind == 3:
            return rng.choice(["null", "true", "[]", "{}", "1", "-1", "0.5", '"ok"'])
        if kind == 4:
            return json.dumps(rng.choice(["a", "b", 3, 2.5, [1, 2], {"x": 1}]))
        return rng.choice(NUMBERS + STRINGS)

    def arguments(self, rng: random.Random, params: list[str]) -> str:
        names = list(params) + ["unexpected", "", "__class__", "\\ud800"]  # the last: a lone surrogate escape
        n = rng.choice([0, 1, 2, 3, len(params)])
        pairs = [f'"{rng.choice(names)}": {self.value(rng)}' for _ in range(n)]
        shape = rng.randrange(8)
        if shape == 0:
            return nested(rng.choice(DEPTHS), rng)
        if shape == 1:
            return json.dumps("{" + ", ".join(pairs) + "}")  # arguments as a JSON string
        if shape == 2:
            return rng.choice(['"not json"', "[]", "null", "42", '"{"'])
        return "{" + ", ".join(pairs) + "}"

    def plausible(self, rng: random.Random, json_type: str | None) -> str:
        """A value of the parameter's type, or a hostile one of that type."""
        typed = {"integer": ["1", "0", "-3", "100000000000000000000", "9223372036854775807"],
                 "number": ["1.5", "0", "1e308", "-1e-320", "1e999"],
                 "string": ['"a"', '"1"', '"{workdir}/x"', r'"\ud800"', '"' + "y" * 50 + '"'],
                 "boolean": ["true", "false"], "array": ["[]", '["a", 1]', nested(300, rng)],
                 "object": ["{}", '{"a": 1}', nested(33, rng)]}
        return rng.choice(typed.get(json_type or "", ['"a"', "1", "null"]))

    def call(self, rng: random.Random) -> str:
        real = rng.random() < 0.6
        name = rng.choice(list(self.tools)) if real else rng.choice(NAMES)
        params = list(self.tools.get(name, {}))
        if real and rng.random() < 0.5:  # every parameter, each of its own type
            args = ", ".join(f'"{p}": {self.plausible(rng, t)}' for p, t in self.tools[name].items())
            return f'<tool_call>\n{{"name": "{name}", "arguments": {{{args}}}}}\n</tool_call>'
        body = f'{{"name": "{name}", "arguments": {self.arguments(rng, params)}}}'
        form = rng.randrange(12)
        if form == 0:
            return "<tool_call>\n" + body  # never closed
        if form == 1:
            return "<tool_call><tool_call>" + body + "</tool_call></tool_call>"
        if form == 2:
            return "</tool_call>" + body + "<tool_call>"
        if form == 3:
            return "<tool_call>" + body[: rng.randrange(len(body) + 1)] + "</tool_call>"  # cut mid-JSON
        if form == 4:
            return "<tool_call>" + body + " trailing garbage }</tool_call>"
        if form == 5:
            return "<tool_call></tool_call>"
        if form == 6:
            return f'<tool_call>{{"name": {self.value(rng)}, "arguments": {{}}}}</tool_call>'
        return f"<tool_call>\n{body}\n</tool_call>"

    def reply(self, rng: random.Random) -> str | list[int]:
        """One reply: text (tool calls and prose), or raw token ids (noise)."""
        kind = rng.random()
        if kind < 0.1:  # random tokens: broken UTF-8, special tokens, anything in the vocabulary
            return [rng.randrange(self.vocab_size) for _ in range(rng.randrange(1, 64))]
        if kind < 0.2:
            return rng.choice(["", "Done.", "\u0000\u0001", "<|im_end|>", "<|im_start|>user\nhi", "I cannot."])
        calls = "".join(self.call(rng) for _ in range(rng.choice([1, 1, 1, 2, 3, 10])))
        return rng.choice(["", "Let me call a tool. ", "\u200b"]) + calls
