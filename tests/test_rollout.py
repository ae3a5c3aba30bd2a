"""`rods rollout`: token-in token-out on every rollout, determinism, limits, failing backends.

The main run is the acceptance run: `rods init-policy`, then `rods rollout` on 20 built-in
tasks x G=4 on CPU with the real tiny model. A random tiny model never writes a tool call,
so the episodes with malformed calls and withheld functions come from a scripted backend
that replies with fixed texts (tokenized by the real tokenizer) through the same engine,
the same chat template and the same environments.
"""

from __future__ import annotations

import pytest

from rodscli import records
from rodscli.cli import main
from rodscli.envs.base import PARSE_ERROR, WITHHELD, offered_tools, open_episode
from rodscli.envs.builtin import seed_tasks
from rodscli.errors import BackendError
from rodscli.policy.base import Backend, Generation, Request, load_tokenizer
from rodscli.policy.chat import ChatFormat, format_tool_call
from rodscli.reporter import Silent
from rodscli.stages.rollout import RolloutOptions, iter_rollouts, load_backend, rollout

# short replies keep the CPU run quick; every episode still takes several turns
FAST = ["--max-new-tokens", "12", "--batch-size", "80", "--temperature", "1.0"]


def twenty_tasks() -> list[dict]:
    """20 built-in tasks covering both domains and all four skills (miss_func included)."""
    return [t for i, t in enumerate(seed_tasks()) if i % 24 == 0][:20]


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks") / "tasks.jsonl"
    records.write_records(path, twenty_tasks(), "task")
    return path


@pytest.fixture(scope="module")
def fmt(tiny_policy):
    return ChatFormat(load_tokenizer(tiny_policy))


@pytest.fixture(scope="module")
def acceptance_run(tiny_policy, task_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("rollouts") / "rollouts.parquet"
    argv = ["--quiet", "--seed", "7", "rollout", "--policy", str(tiny_policy), "--tasks", str(task_file),
            "--group-size", "4", "--out", str(out), *FAST]
    assert main(argv) == 0
    return out


# ---------------------------------------------------------------------------------------
# the invariant


def rendered(rec: dict, task: dict, fmt: ChatFormat) -> str:
    """The chat template's rendering of the rollout's messages (assistant = its raw text),
    up to the last end-of-turn token or generation prompt (what comes after is not in it)."""
    msgs = [{"role": m["role"], "content": m["raw"] if m["role"] == "assistant" else m["content"]} for m in rec["messages"]]
    with open_episode(task) as episode:
        tools = offered_tools(task, episode, 0)
    if msgs[-1]["role"] != "assistant":
        return fmt.render(msgs, tools=tools, gen=True)
    text = fmt.render(msgs, tools=tools, gen=False)
    return text[: text.rindex(fmt.eot_text) + len(fmt.eot_text)]


def spans(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of every run of 1s."""
    out, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def assert_token_in_token_out(rec: dict, task: dict, fmt: ChatFormat) -> None:
    ids, mask, lps = rec["token_ids"], rec["loss_mask"], rec["logprobs"]
    assert len(ids) == len(mask) == len(lps), rec["rollout_id"]
    # decoding the ids gives the rendered conversation: nothing re-tokenized, nothing lost
    assert fmt.decode(ids) == rendered(rec, task, fmt), rec["rollout_id"]
    # the mask is 1 exactly on the assistant replies, each as the model wrote it
    replies = [m["raw"] for m in rec["messages"] if m["role"] == "assistant"]
    runs = spans(mask)
    assert len(runs) == len(replies), rec["rollout_id"]
    for (a, b), raw in zip(runs, replies, strict=True):
        if ids[b - len(fmt.eot_ids):b] == fmt.eot_ids:  # the model stopped itself
            assert fmt.decode(ids[a:b - len(fmt.eot_ids)]) == raw
        else:  # cut off: the turn is closed by an end-of-turn token that is not the model's
            assert fmt.decode(ids[a:b]) == raw and ids[b:b + len(fmt.eot_ids)] == fmt.eot_ids
    assert all(lp == 0.0 for lp, m in zip(lps, mask, strict=True) if not m)
    assert all(lp <= 0.0 for lp in lps)
    assert rec["n_model_tokens"] == sum(mask)


def assert_logprobs_are_the_models(recs: list[dict], model) -> None:
    """Each model token's log-prob is the model's on the stored ids (one full forward pass):
    the tokens are what it produced in the context it saw (temperature 1, top-p 1)."""
    import torch

    for rec in recs:
        ids = torch.tensor([rec["token_ids"]])
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        pos = [i for i, m in enumerate(rec["loss_mask"]) if m]
        want = logp[[i - 1 for i in pos], [rec["token_ids"][i] for i in pos]]
        got = torch.tensor([rec["logprobs"][i] for i in pos])
        assert torch.allclose(got, want, atol=1e-4), (rec["rollout_id"], (got - want).abs().max())


# ---------------------------------------------------------------------------------------
# the acceptance run: 20 built-in tasks x G=4 on CPU


@pytest.mark.slow
def test_twenty_tasks_by_four_validate_and_keep_token_in_token_out(acceptance_run, fmt, tiny_policy):
    from rodscli.policy.hf import load_model

    recs = records.read_all(acceptance_run, "rollout")  # validates against schemas/rollout.json
    tasks = {t["id"]: t for t in twenty_tasks()}
    assert len(recs) == 80
    assert [(r["task_id"], r["sample_index"]) for r in recs] == [(t, k) for t in tasks for k in range(4)]
    assert {r["group_id"] for r in recs} == set(tasks)
    assert all(r["backend"] == "hf" and r["n_model_tokens"] > 0 for r in recs)
    assert any(r["n_turns_reached"] > 1 for r in recs)  # multi-turn episodes went on past turn 0
    assert any(m["role"] == "system" for r in recs for m in r["messages"][1:])  # a withheld tool was revealed
    for rec in recs:
        assert_token_in_token_out(rec, tasks[rec["task_id"]], fmt)
    # one full forward pass per group keeps the test short; the G samples share their prompt
    assert_logprobs_are_the_models([r for r in recs if r["sample_index"] == 0], load_model(tiny_policy, "cpu"))


def test_same_seed_same_token_ids(tiny_policy):
    tasks = twenty_tasks()[:2]
    opts = RolloutOptions(group_size=2, max_new_tokens=8, batch_size=4)
    runs = [rollout(tasks, load_backend(str(tiny_policy), opts), opts, seed=s) for s in (3, 3, 4)]
    ids = [[r["token_ids"] for r in run] for run in runs]
    assert ids[0] == ids[1]
    assert ids[0] != ids[2]
    # the G samples of a task differ (each has its own seed)
    assert runs[0][0]["token_ids"] != runs[0][1]["token_ids"]


def test_batching_does_not_change_an_episode(tiny_policy):
    """An episode's tokens do not depend on which episodes share its batch (CPU)."""
    tasks = twenty_tasks()[:2]
    opts = RolloutOptions(group_size=2, max_new_tokens=8, batch_size=4)
    one = RolloutOptions(group_size=2, max_new_tokens=8, batch_size=1)
    backend = load_backend(str(tiny_policy), opts)
    assert [r["token_ids"] for r in rollout(tasks, backend, opts, seed=1)] == \
        [r["token_ids"] for r in rollout(tasks, backend, one, seed=1)]


# ---------------------------------------------------------------------------------------
# malformed calls, withheld tools, limits: a scripted policy through the real engine


class Scripted(Backend):
    """Replies with fixed texts in turn (per episode), tokenized by the real tokenizer.
    A text ending in "…" is returned without an end-of-turn token, as if cut off."""

    name = "scripted"
    policy_id = "scripted"

    def __init__(self, tokenizer, replies: list[str]):
        self.tokenizer, self.replies, self.seen = tokenizer, replies, {}
        self.fmt = ChatFormat(tokenizer)

    def generate(self, requests: list[Request], stop_ids: list[int]) -> list[Generation]:
        out = []
        for r in requests:
            k = self.seen.get(r.key, 0)
            self.seen[r.key] = k + 1
            text = self.replies[min(k, len(self.replies) - 1)]
            cut = text.endswith("…")
            if cut:  # runs until the reply's token budget is spent
                ids = (self.fmt.encode(text[:-1] + " ") * r.max_new_tokens)[: r.max_new_tokens]
            else:
                ids = self.fmt.encode(text)[: r.max_new_tokens - len(self.fmt.eot_ids)] + self.fmt.eot_ids
            out.append(Generation(ids, [-0.5] * len(ids), stopped=not cut))
        return out


def miss_func_task() -> dict:
    return next(t for t in seed_tasks() if t["skill"] == "miss_func" and t["withheld"][0]["turn"] == 1)


def test_malformed_and_withheld_calls_are_recorded_and_keep_the_invariant(fmt, tmp_path):
    task = miss_func_task()
    hidden = task["withheld"][0]["tool"]
    replies = [
        format_tool_call(hidden, {}),  # withheld at turn 0
        '<tool_call>\n{"name": "find_customer", "arguments": {"name": "x"\n</tool_call>',  # bad JSON
        'Let me try. <tool_call>\n["not", "an", "object"]\n</tool_call> and <tool_call>\n{"name": ',  # two bad blocks, one unclosed
        "I cannot do that yet.",  # turn 0 ends: the withheld tool is revealed with turn 1
        format_tool_call(hidden, {"customer_id": "C-0001"}),
        "Done, partly…",  # cut off mid-reply
        "Done.",
    ]
    opts = RolloutOptions(group_size=2, max_new_tokens=64)
    recs = rollout([task], Scripted(fmt.tokenizer, replies), opts, seed=0)
    for rec in recs:
        assert_token_in_token_out(rec, task, fmt)
        errors = [c["error"] for c in rec["calls"]]
        assert errors[:4] == [WITHHELD, PARSE_ERROR, PARSE_ERROR, PARSE_ERROR]
        assert errors[4] != WITHHELD and rec["calls"][4]["name"] == hidden and rec["calls"][4]["turn"] == 1
        announce = [m for m in rec["messages"][2:] if m["role"] == "system"]
        assert len(announce) == 1 and hidden in announce[0]["content"]
        assert rec["finish_reason"] == "done" and rec["n_turns_reached"] == len(task["user_turns"])
        assert all(lp in (0.0, -0.5) for lp in rec["logprobs"])
    records.write_records(tmp_path / "r.jsonl", recs, "rollout")  # validates


def test_max_steps_closes_the_episode(fmt):
    task = twenty_tasks()[0]
    opts = RolloutOptions(group_size=1, max_steps_per_turn=3)
    (rec,) = rollout([task], Scripted(fmt.tokenizer, [format_tool_call("nope", {})]), opts)
    assert rec["finish_reason"] == "max_steps" and len(rec["calls"]) == 3
    assert_token_in_token_out(rec, task, fmt)


def test_max_tokens_closes_the_episode(fmt):
    task = twenty_tasks()[0]
    (first,) = rollout([task], Scripted(fmt.tokenizer, ["Done."]), RolloutOptions(group_size=1))
    prompt = first["loss_mask"].index(1)
    opts = RolloutOptions(group_size=1, max_tokens=prompt + 200, max_steps_per_turn=50)
    (rec,) = rollout([task], Scripted(fmt.tokenizer, [format_tool_call("nope", {"x": "y" * 20})]), opts)
    assert rec["finish_reason"] == "max_tokens" and len(rec["token_ids"]) <= opts.max_tokens
    assert_token_in_token_out(rec, task, fmt)


def test_timeout_closes_the_episode(fmt):
    task = twenty_tasks()[0]
    opts = RolloutOptions(group_size=2, timeout=1e-9)
    recs = rollout([task], Scripted(fmt.tokenizer, ["Done."]), opts)
    assert [r["finish_reason"] for r in recs] == ["timeout", "timeout"]
    for rec in recs:
        assert_token_in_token_out(rec, task, fmt)


# ---------------------------------------------------------------------------------------
# failing backends: a clear error, exit 2, no output


def test_bad_checkpoint_path_is_a_clear_error_and_no_output(task_file, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["rollout", "--policy", str(tmp_path / "nope"), "--tasks", str(task_file), "--out", str(out)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_checkpoint_without_weights_is_a_clear_error(tiny_policy, task_file, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in tiny_policy.iterdir():
        if not f.name.endswith(".safetensors"):
            (ckpt / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "r.jsonl"
    assert main(["rollout", "--policy", str(ckpt), "--tasks", str(task_file), "--out", str(out)]) == 2
    assert "cannot load the model" in capsys.readouterr().err
    assert not out.exists()


class Failing(Scripted):
    def generate(self, requests, stop_ids):
        if len(self.seen) >= 2:
            raise BackendError("server went away")
        return super().generate(requests, stop_ids)


def test_a_backend_failing_mid_run_raises(fmt):
    with pytest.raises(BackendError, match="went away"):
        rollout(twenty_tasks()[:2], Failing(fmt.tokenizer, [format_tool_call("nope", {})]), RolloutOptions(group_size=1, batch_size=1))


def test_a_prompt_that_leaves_no_room_warns_once_per_task(fmt):
    task = twenty_tasks()[0]
    (first,) = rollout([task], Scripted(fmt.tokenizer, ["Done."]), RolloutOptions(group_size=1))
    prompt = first["loss_mask"].index(1)
    reporter = Silent()
    warnings = reporter.warnings
    # no room at all: the episodes end max_tokens with no model token, and say why once
    opts = RolloutOptions(group_size=3, max_tokens=prompt, max_new_tokens=64)
    recs = list(iter_rollouts([task], Scripted(fmt.tokenizer, ["Done."]), opts, reporter=reporter))
    assert [r["finish_reason"] for r in recs] == ["max_tokens"] * 3 and all(r["n_model_tokens"] == 0 for r in recs)
    assert len(warnings) == 1
    assert f"is {prompt} tokens" in warnings[0] and "leaves no room" in warnings[0]
    assert f"at least {prompt + len(fmt.eot_ids) + 64}" in warnings[0]
    # some room, less than --max-new-tokens: a warning, and the replies run
    opts = RolloutOptions(group_size=1, max_tokens=prompt + 20, max_new_tokens=64)
    warnings.clear()
    (rec,) = iter_rollouts([task], Scripted(fmt.tokenizer, ["Done."]), opts, reporter=reporter)
    assert rec["n_model_tokens"] > 0 and len(warnings) == 1 and "fewer than --max-new-tokens 64" in warnings[0]
    warnings.clear()
    list(iter_rollouts([task], Scripted(fmt.tokenizer, ["Done."]), RolloutOptions(group_size=1), reporter=reporter))
    assert warnings == []
    # rollout() counts the episodes on the reporter it is given (the CLI's draws the bar)
    counted = []

    class Counting(Silent):
        def track(self, items, description, total=None, status=None):
            for item in items:
                counted.append((description, total))
                yield item

    assert len(rollout([task], Scripted(fmt.tokenizer, ["Done."] * 2), RolloutOptions(group_size=2), reporter=Counting())) == 2
    assert counted == [("rollout", 2)] * 2


def test_the_prompt_room_warning_reaches_the_cli(tiny_policy, task_file, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["rollout", "--policy", str(tiny_policy), "--tasks", str(task_file), "--group-size", "1",
                 "--max-tokens", "40", "--max-new-tokens", "8", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "leaves no room for a reply" in err
    assert all(r["finish_reason"] == "max_tokens" and r["n_model_tokens"] == 0 for r in records.read_all(str(out), "rollout"))
