"""Checkpoints whose chat template has no tool support, and `--chat-template`.

The templates here are written for the tests, after the ones real checkpoints ship:
SmolLM2's (ChatML, any role, no tools), a Llama-2-style one (system folded into the first
user turn, roles must alternate user/assistant, raises otherwise) and the tiny policy's own.
"""

from __future__ import annotations

import json
import shutil

import pytest

from rodscli.cli import main
from rodscli.envs.builtin.seeds import seed_tasks
from rodscli.policy.base import load_tokenizer
from rodscli.policy.chat import (
    DEFAULT_SYSTEM_PROMPT,
    TEMPLATE_PATH,
    ChatFormat,
    Conversation,
    parse_tool_calls,
    teacher_forced,
)
from rodscli.policy.tiny import _tokenizer_from_texts
from rodscli.records import file_hash, read_all, read_provenance

# SmolLM2-135M-Instruct's template in kind: ChatML for any role, `tools` never looked at
CHATML_NO_TOOLS = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama 2's template in kind: no system role of its own, user/assistant must alternate
ALTERNATING_NO_TOOLS = (
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set msgs = messages[1:] %}"
    "{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
    "{% for message in msgs %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '<|im_start|>user\n' + (sys + '\n\n' if loop.first and sys else '') + message['content'] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>assistant\n' + message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _format(template: str) -> ChatFormat:
    tok = _tokenizer_from_texts(["rods"], 300, TEMPLATE_PATH.read_text())
    tok.chat_template = template
    return ChatFormat(tok)


def _task(skill: str) -> dict:
    return next(t for t in seed_tasks("retail", seed=0, per_skill=1) if t["skill"] == skill)


def _tool_lines(text: str) -> list[dict]:
    """The JSON schemas listed in the last `<tools>` block of `text`."""
    block = text[text.rindex("<tools>\n") + len("<tools>\n"):text.rindex("\n</tools>")]
    return [json.loads(line) for line in block.split("\n")]


def _assert_token_in_token_out(conv: Conversation) -> None:
    """The ids decode to the template's own rendering of the messages rods inserted."""
    text = conv.fmt.render(conv.template_messages, tools=conv.tools or None, gen=False)
    decoded = conv.fmt.decode(conv.token_ids)
    assert decoded == text[: text.rindex(conv.fmt.eot_text) + len(conv.fmt.eot_text)]


def test_probes_tell_the_templates_apart():
    tiny, chatml, alternating = _format(TEMPLATE_PATH.read_text()), _format(CHATML_NO_TOOLS), _format(ALTERNATING_NO_TOOLS)
    assert (tiny.lists_tools, tiny.system_role, tiny.tool_role, tiny.wraps_tool_results) == (True, True, True, True)
    assert (chatml.lists_tools, chatml.system_role, chatml.tool_role, chatml.wraps_tool_results) == (False, True, True, False)
    assert (alternating.lists_tools, alternating.tool_role, alternating.system_mid_conversation) == (False, False, False)


def test_a_template_without_tools_gets_them_in_the_system_prompt_in_hermes_form():
    fmt, task = _format(CHATML_NO_TOOLS), _task("base")
    rec = teacher_forced(fmt.tokenizer, task, fmt=fmt)
    text = fmt.decode(rec["token_ids"])
    system = text[: text.index("<|im_end|>")]
    assert system.startswith("<|im_start|>system\n" + (task.get("system_prompt") or DEFAULT_SYSTEM_PROMPT) + "\n\n# Tools")
    tools = _tools_offered(task)
    assert _tool_lines(system) == tools  # every schema, whole, one per line: what the parser was made for
    assert "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>" in system
    # the reference calls and their results, as the model will see them
    assert "<|im_start|>tool\n<tool_response>\n" in text
    calls = [c for m in rec["messages"] if m["role"] == "assistant" for c in parse_tool_calls(m["raw"])[1]]
    assert [c.name for c in calls] == [c["name"] for turn in task["reference"] for c in turn]
    # before the fix the template dropped the tools without a word
    assert "<tools>" not in fmt.render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], tools=tools)


def _tools_offered(task: dict) -> list[dict]:
    from rodscli.envs.base import offered_tools, open_episode

    with open_episode(task) as episode:
        return offered_tools(task, episode, 0)


@pytest.mark.parametrize("template", [CHATML_NO_TOOLS, ALTERNATING_NO_TOOLS], ids=["chatml", "alternating"])
def test_tools_revealed_later_are_announced_in_the_same_form_and_tokens_stay_in(template):
    fmt, task = _format(template), _task("miss_func")
    rec = teacher_forced(fmt.tokenizer, task, fmt=fmt)
    text = fmt.decode(rec["token_ids"])
    assert text.count("<tools>\n") == 2  # the system prompt's list, then the announcement
    first, later = text.split("New tools are available")
    listed, announced = _tool_lines(first), _tool_lines(later)
    assert announced and not {t["function"]["name"] for t in announced} & {t["function"]["name"] for t in listed}
    conv = Conversation.start(fmt, "S", listed, "u")
    conv.add_reply(fmt.encode("<tool_call>\n{\"name\": \"x\", \"arguments\": {}}\n</tool_call>") + fmt.eot_ids)
    conv.add_tool_results([("x", "R1"), ("x", "R2")])
    conv.add_reply(fmt.encode("ok") + fmt.eot_ids)
    conv.add_user("next", announced)
    conv.add_reply(fmt.encode("done") + fmt.eot_ids)
    _assert_token_in_token_out(conv)
    if template is ALTERNATING_NO_TOOLS:  # no tool role: the results are one user turn
        assert "<|im_start|>user\n<tool_response>\nR1\n</tool_response>\n<tool_response>\nR2\n</tool_response><|im_end|>" in fmt.decode(conv.token_ids)
        assert fmt.decode(conv.token_ids).startswith("<|im_start|>user\nS\n\n# Tools")


def test_a_template_with_tools_is_left_as_it_was():
    fmt = _format(TEMPLATE_PATH.read_text())
    tools = _tools_offered(_task("base"))
    conv = Conversation.start(fmt, "S", tools, "u")
    assert fmt.decode(conv.token_ids) == fmt.render([{"role": "system", "content": "S"}, {"role": "user", "content": "u"}], tools=tools)
    assert fmt.tool_messages(["r"]) == [{"role": "tool", "content": "r"}]


# ---------------------------------------------------------------------------------------
# --chat-template on the commands


@pytest.fixture(scope="module")
def bare_policy(tiny_policy, tmp_path_factory):
    """The tiny policy without any chat template (as many base checkpoints come)."""
    out = tmp_path_factory.mktemp("bare") / "policy"
    shutil.copytree(tiny_policy, out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def one_task(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks") / "one.jsonl"
    assert main(["--quiet", "tasks", "builtin", "--domain", "retail", "--per-skill", "1", "--no-profile", "--out", str(path)]) == 0
    return path


FAST = ["--group-size", "1", "--max-new-tokens", "8", "--max-tokens", "1200", "--max-steps-per-turn", "1"]


def test_a_checkpoint_without_a_template_is_refused_naming_the_option(bare_policy, one_task, tmp_path, capfd):
    out = tmp_path / "r.jsonl"
    assert main(["rollout", "--policy", str(bare_policy), "--tasks", str(one_task), "--out", str(out), *FAST]) == 2
    err = capfd.readouterr().err
    assert "no chat template" in err and "--chat-template" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_chat_template_overrides_on_rollout_eval_and_sft(bare_policy, tiny_policy, one_task, tmp_path):
    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML_NO_TOOLS)
    out = tmp_path / "r.jsonl"
    argv = ["--quiet", "rollout", "--policy", str(bare_policy), "--tasks", str(one_task), "--out", str(out), *FAST]
    assert main([*argv, "--chat-template", str(template)]) == 0
    fmt = ChatFormat(load_tokenizer(tiny_policy))
    assert read_provenance(out)["inputs"][str(template)] == file_hash(template)  # the template is an input
    for rec in read_all(out, "rollout"):
        assert "<tools>\n{\"type\": \"function\"" in fmt.decode(rec["token_ids"])  # the file's form, not the tiny template's one-line signatures
    # a checkpoint that has a template: the file still wins
    assert main([*argv[:3], str(tiny_policy), *argv[4:], "--chat-template", str(template)]) == 0
    assert all("<tools>\n{\"type\": \"function\"" in fmt.decode(r["token_ids"]) for r in read_all(out, "rollout"))
    evals = tmp_path / "eval.jsonl"
    assert main(["--quiet", "eval", "--policy", str(bare_policy), "--tasks", str(one_task), "--out", str(evals),
                 "--max-new-tokens", "8", "--max-tokens", "1200", "--chat-template", str(template)]) == 0
    assert read_all(evals, "eval")[-1]["n_tasks"] == 4
    sft = tmp_path / "sft"
    assert main(["--quiet", "train-step", "--mode", "sft", "--policy", str(bare_policy), "--tasks", str(one_task),
                 "--out", str(sft), "--epochs", "1", "--chat-template", str(template)]) == 0
    assert (sft / "model.safetensors").exists()
    assert main(["--quiet", "rollout", "--policy", str(bare_policy), "--tasks", str(one_task), "--out", str(out),
                 *FAST, "--chat-template", str(tmp_path / "missing.jinja")]) == 2


# ---------------------------------------------------------------------------------------
# synthesize's llm writer on templates without a system role

# Gemma's template in kind: a system message raises, the assistant is the "model"
RAISES_ON_SYSTEM = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>model\n' }}{% endif %}"
)
# a template that renders user and assistant turns only: a system message is dropped without a word
DROPS_SYSTEM = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.mark.parametrize("template", [RAISES_ON_SYSTEM, DROPS_SYSTEM, CHATML_NO_TOOLS], ids=["raises", "drops", "keeps"])
def test_the_llm_writers_instructions_reach_a_template_without_a_system_role(template):
    from rodscli.synth import SynthesizeOptions
    from rodscli.synth.write.llm import REWRITE_PROMPT, LLMWriter

    writer = LLMWriter(SynthesizeOptions(writer="llm", policy="unused"))
    writer.chat = _format(template)
    turn = "Please find a customer by full name with name 'Ada Moreno'."
    prompt = writer.prompt(turn)
    assert REWRITE_PROMPT in prompt and turn in prompt
    if template == CHATML_NO_TOOLS:  # a template with a system role keeps the instructions there
        assert f"<|im_start|>system\n{REWRITE_PROMPT}<|im_end|>\n<|im_start|>user\n{turn}<|im_end|>" in prompt
    else:  # folded into the first (only) user message
        assert "system" not in prompt and f"<|im_start|>user\n{REWRITE_PROMPT}\n\n{turn}<|im_end|>" in prompt


def test_llm_writer_options_given_to_the_template_writer_are_refused(one_task, tmp_path, capfd):
    """--chat-template and --policy are read by the llm writer only; with the default template
    writer they used to be ignored without a word. Now: exit 2, one line naming the option, no output."""
    template = tmp_path / "t.jinja"
    template.write_text(RAISES_ON_SYSTEM)
    out = tmp_path / "c.jsonl"
    base = ["--quiet", "synthesize", "--seed-tasks", str(one_task), "--per-seed", "1", "--out", str(out)]
    for extra, named in ((["--chat-template", str(template)], "--chat-template"), (["--policy", str(tmp_path)], "--policy")):
        assert main([*base, *extra]) == 2
        err = capfd.readouterr().err
        assert named in err and "--writer llm" in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
    assert main(base) == 0 and read_all(out, "task")  # the same command without them runs


@pytest.mark.slow
def test_synthesize_llm_writer_takes_chat_template(bare_policy, one_task, tmp_path, capfd):
    """`rods synthesize --writer llm --chat-template FILE` prompts the policy with the file's
    template (the checkpoint has none) even when that template raises on a system message."""
    template = tmp_path / "gemma-like.jinja"
    template.write_text(RAISES_ON_SYSTEM)
    out = tmp_path / "c.jsonl"
    argv = ["--quiet", "synthesize", "--seeds", str(one_task), "--per-seed", "1", "--out", str(out),
            "--writer", "llm", "--policy", str(bare_policy)]
    assert main(argv) == 2  # no template at all: refused, one line naming the option, nothing written
    err = capfd.readouterr().err
    assert "--chat-template" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert main([*argv, "--chat-template", str(template)]) == 0
    written = read_all(out, "task")
    assert written and all(len(c["synthesis"]["rewritten"]) == len(c["user_turns"]) for c in written)
    info = read_provenance(out)
    assert info["inputs"][str(template)] == file_hash(template)
    assert info["synthesis"]["turns"] == sum(len(c["user_turns"]) for c in written)
