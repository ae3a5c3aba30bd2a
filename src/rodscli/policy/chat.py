"""Chat rendering and tool-call parsing, token-in token-out (docs/architecture.md section 8).

A conversation is a list of token ids that only ever grows: the prompt is rendered once
with the checkpoint's own chat template, the model's tokens are appended exactly as it
produced them, and every inserted segment (tool results, the next user turn, each followed
by the generation prompt) is rendered as text on its own and tokenized on its own. The
history is never re-tokenized, so the ids the trainer scores are the ids the model saw.

How a segment is rendered without re-rendering the history: the template is applied to a
probe conversation `[user, assistant=MARK]` with and without the new messages; the segment
is everything the template writes after the assistant's end-of-turn token (e.g. the "\\n"
after `<|im_end|>`, then `<|im_start|>user\\n<tool_response>...`, then
`<|im_start|>assistant\\n`). This works for any template whose rendering of a message does
not depend on the content of earlier messages (ChatML, Qwen2.5/3, Hermes, Llama 3).

Tools revealed at a later turn (miss_func tasks) are announced in a system message inserted
before that user turn, listing the new signatures exactly as the template lists tools in
its system prompt (the lines of its `<tools>` block); templates that reject a system
message there get the announcement prepended to the user message instead.

Templates without tool support (SmolLM2's, Gemma's, Llama 2's, most base models'; found by
rendering a probe tool and looking for its name) silently drop `tools=`. For them rods
writes the tools into the system prompt itself, in the Hermes form the parser reads: one
JSON schema per line inside `<tools></tools>`, then the `<tool_call>` instructions (the
same lines announce tools revealed later). Tool results go in `<tool_response>` blocks, as
`tool` messages when the template renders that role, else in one user message. A template
with no system role gets the system prompt at the head of the first user message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson

from rodscli.envs.base import (
    ENV_ERROR,
    PARSE_ERROR,
    offered_tools,
    open_episode,
    tool_name,
)

TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful assistant that completes the user's requests by calling the tools "
    "provided. Call one tool at a time when a call needs an earlier result. When the request "
    "is done, or a needed value or tool is missing, answer in plain text without a tool call."
)
# teacher_forced's texts for the assistant's closing answer of a turn
FINAL_ANSWER = "Done."
NO_CALL_ANSWER = "I cannot do that yet: a needed value or tool is missing. Please tell me more."

_MARK = "\u2063rods-probe\u2063"
_SHOWN = "\u2063rods-shown\u2063"  # content of a probe message (never _MARK: `inserted` anchors on that)
_TOOLS_BLOCK = re.compile(r"<tools>\n(.*?)\n</tools>", re.S)  # a template's tool list (not "<tools></tools>" in its prose)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_PROBE_TOOL = {"type": "function", "function": {"name": "rods_probe_tool", "description": "",
                                                "parameters": {"type": "object", "properties": {}}}}
# the Hermes/Qwen2.5 system-prompt section, for templates that do not list tools themselves
HERMES_TOOLS = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{listing}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>"
)


# ---------------------------------------------------------------------------------------
# tool calls as text


@dataclass
class ParsedCall:
    """One `<tool_call>` block: name and arguments, or a parse error with its reason."""

    raw: str
    name: str | None = None
    arguments: dict | None = None
    error: str | None = None
    problem: str | None = None


def format_tool_call(name: str, arguments: dict) -> str:
    """A call the way Hermes/Qwen templates write one (json.dumps = jinja's tojson)."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


# the deepest arguments a call may have: enough for any real tool, far below what breaks a
# JSON writer (orjson stops at 255 levels) or Python's recursion limit
MAX_ARGUMENT_DEPTH = 32


def parse_tool_calls(text: str) -> tuple[str, list[ParsedCall]]:
    """Split an assistant message into its plain text and its `<tool_call>` blocks.

    Each block must hold a JSON object {"name": str, "arguments": object (or a JSON string
    of one)}; anything else, including a block the model never closed, is a parse_error
    call. Model text is only ever parsed as JSON, never evaluated. The parser is strict
    JSON (orjson): no NaN or Infinity, no lone surrogates, numbers past 64-bit integers
    become floats; arguments nested deeper than MAX_ARGUMENT_DEPTH are a parse_error too,
    so whatever a call holds can be written to the rollout records.
    """
    calls = []
    for match in _TOOL_CALL.finditer(text):
        raw = match.group(0)
        body = match.group(1).strip()
        if not match.group(0).endswith("</tool_call>"):
            calls.append(ParsedCall(raw, error=PARSE_ERROR, problem="unclosed <tool_call>"))
            continue
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            calls.append(ParsedCall(raw, error=PARSE_ERROR, problem=f"invalid JSON ({exc})"))
            continue
        name = obj.get("name") if isinstance(obj, dict) else None
        args = obj.get("arguments", {}) if isinstance(obj, dict) else None
        if isinstance(args, str):
            try:
                args = orjson.loads(args)
            except orjson.JSONDecodeError:
                args = None
        if not isinstance(name, str) or not isinstance(args, dict):
            calls.append(ParsedCall(raw, error=PARSE_ERROR, problem='expected {"name": string, "arguments": object}'))
            continue
        if _depth(args, MAX_ARGUMENT_DEPTH) > MAX_ARGUMENT_DEPTH:
            calls.append(ParsedCall(raw, error=PARSE_ERROR, problem=f"arguments nested deeper than {MAX_ARGUMENT_DEPTH} levels"))
            continue
        calls.append(ParsedCall(raw, name=name, arguments=args))
    content = _TOOL_CALL.sub("", text).strip()
    return content, calls


def _depth(value: Any, limit: int) -> int:
    """Levels of containers in JSON data ({} is 1, {"a": [1]} is 2), counted up to limit + 1."""
    depth, level = 0, [value]
    while depth <= limit:
        level = [x for x in level if isinstance(x, dict | list)]
        if not level:
            break
        depth += 1
        level = [v for x in level for v in (x.values() if isinstance(x, dict) else x)]
    return depth


# ---------------------------------------------------------------------------------------
# what a chat template writes around messages


class ChatFormat:
    """A tokenizer's chat template, probed once: end-of-turn token, stop ids, segments."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template")
        probe = self.render([{"role": "user", "content": "u"}, {"role": "assistant", "content": _MARK}], gen=False)
        after = probe[probe.rindex(_MARK) + len(_MARK):]
        # the end-of-turn token is the special token the template writes right after a reply
        eot = next((t for t in self._special_tokens() if after.startswith(t)), None)
        if eot is None:
            raise ValueError(f"cannot find the end-of-turn token after an assistant reply in {after!r}")
        self.eot_text = eot
        self.eot_ids = self.encode(eot)

    def _special_tokens(self) -> list[str]:
        tok = self.tokenizer
        names = set(getattr(tok, "all_special_tokens", []) or [])
        names |= {str(t) for t in (getattr(tok, "added_tokens_decoder", {}) or {}).values()}
        return sorted((n for n in names if n), key=len, reverse=True)

    @cached_property
    def stop_ids(self) -> list[int]:
        """Token ids that end a reply: the end-of-turn token and the tokenizer's eos."""
        ids = list(self.eot_ids[-1:])
        eos = getattr(self.tokenizer, "eos_token_id", None)
        for e in eos if isinstance(eos, list) else [eos]:
            if isinstance(e, int) and e not in ids:
                ids.append(e)
        return ids

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if isinstance(pad, int) else self.stop_ids[0]

    def render(self, messages: list[dict], tools: list[dict] | None = None, gen: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=gen, tokenize=False
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def inserted(self, new_messages: list[dict]) -> str:
        """Text the template writes after an assistant's end-of-turn token for `new_messages`,
        ending with the generation prompt of the next reply."""
        base = [{"role": "user", "content": "u"}, {"role": "assistant", "content": _MARK}]
        text = self.render(base + new_messages, gen=True)
        anchor = _MARK + self.eot_text
        return text[text.rindex(anchor) + len(anchor):]

    def tool_listing(self, tools: list[dict]) -> str:
        """`tools` as the template lists them in its system prompt (the lines inside its
        `<tools>` block: a JSON schema per line for Qwen, a one-line signature for the tiny
        policy); one JSON schema per line for a template without such a block."""
        try:
            text = self.render([{"role": "user", "content": _MARK}], tools=tools, gen=False)
        except Exception:  # a template may reject tools (jinja raise_exception)
            text = ""
        found = _TOOLS_BLOCK.search(text)
        return found.group(1) if found else "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)

    def announce(self, tools: list[dict]) -> list[dict]:
        """Messages that reveal tools offered from this turn on (see module doc)."""
        listing = self.tool_listing(tools)
        text = f"New tools are available from now on. Their signatures, within <tools></tools> XML tags:\n<tools>\n{listing}\n</tools>"
        return [{"role": "system", "content": text}]

    def _shows(self, render: Any) -> bool:
        """Whether `render()` runs and writes the probe content (templates may raise on a role)."""
        try:
            return _SHOWN in render()
        except Exception:  # jinja raise_exception, e.g. "roles must alternate user/assistant"
            return False

    @cached_property
    def lists_tools(self) -> bool:
        """Whether the template writes the tools it is given (many drop them silently)."""
        try:
            text = self.render([{"role": "user", "content": "u"}], tools=[_PROBE_TOOL], gen=False)
        except Exception:
            return False
        return "rods_probe_tool" in text

    @cached_property
    def system_role(self) -> bool:
        """Whether the template renders a leading system message."""
        return self._shows(lambda: self.render([{"role": "system", "content": _SHOWN}, {"role": "user", "content": "u"}]))

    @cached_property
    def tool_role(self) -> bool:
        """Whether the template renders a `tool` message after an assistant reply."""
        return self._shows(lambda: self.inserted([{"role": "tool", "content": _SHOWN}]))

    @cached_property
    def wraps_tool_results(self) -> bool:
        """Whether the template itself puts a tool message inside `<tool_response>` tags."""
        return self.tool_role and "<tool_response>" in self.inserted([{"role": "tool", "content": _SHOWN}])

    def opening(self, system: str, tools: list[dict], user: str) -> tuple[list[dict], list[dict]]:
        """The first messages to render and the tools to hand the template with them."""
        template_tools = list(tools)
        if tools and not self.lists_tools:
            system = f"{system}\n\n{HERMES_TOOLS.format(listing=self.tool_listing(tools))}"
            template_tools = []
        if not self.system_role:
            return [{"role": "user", "content": f"{system}\n\n{user}"}], template_tools
        return [{"role": "system", "content": system}, {"role": "user", "content": user}], template_tools

    def tool_messages(self, texts: list[str]) -> list[dict]:
        """Tool results as the messages to render (see module doc)."""
        if self.wraps_tool_results:
            return [{"role": "tool", "content": t} for t in texts]
        wrapped = [f"<tool_response>\n{t}\n</tool_response>" for t in texts]
        if self.tool_role:
            return [{"role": "tool", "content": w} for w in wrapped]
        return [{"role": "user", "content": "\n".join(wrapped)}]

    @cached_property
    def system_mid_conversation(self) -> bool:
        """Whether the template renders a system message after the first one."""
        return self._shows(lambda: self.inserted([{"role": "system", "content": _SHOWN}, {"role": "user", "content": "x"}]))


# ---------------------------------------------------------------------------------------
# a growing conversation


@dataclass
class Conversation:
    """Token ids, log-probs and loss mask of one episode, grown segment by segment."""

    fmt: ChatFormat
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)  # OpenAI format, for humans
    template_messages: list[dict] = field(default_factory=list)  # what the template renders
    tools: list[dict] = field(default_factory=list)  # handed to the template with the first messages

    @classmethod
    def start(cls, fmt: ChatFormat, system: str, tools: list[dict], user: str) -> Conversation:
        rendered, template_tools = fmt.opening(system, tools, user)
        conv = cls(fmt, tools=template_tools)
        conv._append(fmt.encode(fmt.render(rendered, tools=template_tools, gen=True)))
        conv.messages += [{"role": "system", "content": system}, {"role": "user", "content": user}]
        conv.template_messages += rendered
        return conv

    def __len__(self) -> int:
        return len(self.token_ids)

    def _append(self, ids: list[int], logprobs: list[float] | None = None) -> None:
        self.token_ids += ids
        if logprobs is None:
            self.logprobs += [0.0] * len(ids)
            self.loss_mask += [0] * len(ids)
        else:
            self.logprobs += [float(x) for x in logprobs]
            self.loss_mask += [1] * len(ids)

    def add_reply(self, ids: list[int], logprobs: list[float] | None = None) -> tuple[str, list[ParsedCall]]:
        """Append the model's tokens as produced (mask 1); close the turn if it did not.

        Returns the reply's raw text (without the end-of-turn token) and its tool calls.
        `logprobs` None means teacher forcing: zeros, still mask 1.
        """
        ids = list(ids)
        self._append(ids, logprobs if logprobs is not None else [0.0] * len(ids))
        eot = self.fmt.eot_ids
        if ids[-len(eot):] == eot:
            text = self.fmt.decode(ids[: -len(eot)])
        else:  # cut off by the token limit, or another stop token: close the turn (mask 0)
            text = self.fmt.decode(ids)
            self._append(list(eot))
        content, calls = parse_tool_calls(text)
        self.template_messages.append({"role": "assistant", "content": text})
        message: dict[str, Any] = {"role": "assistant", "content": content, "raw": text}
        good = [c for c in calls if c.error is None]
        if good:
            message["tool_calls"] = [
                {"id": f"call_{len(self.messages)}_{i}", "type": "function",
                 "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                for i, c in enumerate(good)
            ]
        self.messages.append(message)
        return text, calls

    def _insert(self, new: list[dict]) -> None:
        self._append(self.fmt.encode(self.fmt.inserted(new)))
        self.template_messages += new

    def add_tool_results(self, results: list[tuple[str | None, str]]) -> None:
        """Insert one `tool` message per (tool name, result text), then the generation prompt."""
        self._insert(self.fmt.tool_messages([text for _, text in results]))
        self.messages += [{"role": "tool", "name": name, "content": text} for name, text in results]

    def add_user(self, text: str, new_tools: list[dict] | None = None) -> None:
        """Insert the next user turn (announcing `new_tools` first), then the generation prompt."""
        new: list[dict] = []
        if new_tools and self.fmt.system_mid_conversation:
            new += self.fmt.announce(new_tools)
        elif new_tools:
            text = self.fmt.announce(new_tools)[0]["content"] + "\n\n" + text
        new.append({"role": "user", "content": text})
        self._insert(new)
        self.messages += [dict(m) for m in new]

    def rendered(self) -> str:
        """The template's rendering of the whole conversation (for the invariant checks)."""
        return self.fmt.render(self.template_messages, tools=self.tools, gen=False)


def revealed_tools(task: dict, episode: Any, turn: int) -> list[dict]:
    """Tools offered at `turn` that were not offered at `turn - 1`."""
    if turn == 0:
        return []
    before = {tool_name(t) for t in offered_tools(task, episode, turn - 1)}
    return [t for t in offered_tools(task, episode, turn) if tool_name(t) not in before]


# ---------------------------------------------------------------------------------------
# teacher forcing (SFT warm start)


def teacher_forced(
    tokenizer: Any,
    task: dict,
    system_prompt: str | None = None,
    final_answer: str = FINAL_ANSWER,
    no_call_answer: str = NO_CALL_ANSWER,
    fmt: ChatFormat | None = None,
) -> dict:
    """The task's reference solution rendered as a rollout-shaped dict, for SFT.

    Each reference call is one assistant step (a `<tool_call>` block), its result comes from
    executing it in a fresh episode; each turn ends with `final_answer` (or `no_call_answer`
    when the turn's reference is empty). Returns {task_id, token_ids, loss_mask, logprobs
    (zeros), messages, calls, turn_state_hashes, n_model_tokens}; loss_mask is 1 on the
    assistant tokens including their end-of-turn token, as in a rollout.
    """
    fmt = fmt or ChatFormat(tokenizer)
    system = system_prompt or task.get("system_prompt") or DEFAULT_SYSTEM_PROMPT
    calls_out: list[dict] = []
    hashes: list[str] = []
    with open_episode(task) as episode:
        conv = Conversation.start(fmt, system, offered_tools(task, episode, 0), task["user_turns"][0])
        for turn, reference in enumerate(task["reference"]):
            if turn > 0:
                conv.add_user(task["user_turns"][turn], revealed_tools(task, episode, turn))
            offered = {tool_name(t) for t in offered_tools(task, episode, turn)}
            for step, call in enumerate(reference):
                raw = format_tool_call(call["name"], call["arguments"])
                conv.add_reply(fmt.encode(raw) + fmt.eot_ids)
                outcome = episode.call(call["name"], call["arguments"], offered)
                calls_out.append({"turn": turn, "step": step, "name": call["name"], "arguments": call["arguments"],
                                  "raw": raw, "result": outcome.result, "error": outcome.error})
                conv.add_tool_results([(call["name"], outcome.result or "")])
                if outcome.error == ENV_ERROR:
                    break
            answer = final_answer if reference else no_call_answer
            conv.add_reply(fmt.encode(answer) + fmt.eot_ids)
            hashes.append(episode.snapshot_hash())
    return {
        "task_id": task["id"],
        "token_ids": conv.token_ids,
        "loss_mask": conv.loss_mask,
        "logprobs": conv.logprobs,
        "messages": conv.messages,
        "calls": calls_out,
        "turn_state_hashes": hashes,
        "n_model_tokens": sum(conv.loss_mask),
    }
