"""`rods eval`: per-task pass@k and per-skill aggregation on hand-computed numbers, episodes on
real built-in tasks scored by the real score stage, and the CLI on the real tiny model."""

from __future__ import annotations

import pytest

from rodscli import records, schemas
from rodscli.cli import main
from rodscli.envs.builtin import seed_tasks
from rodscli.errors import InputError, OptionError
from rodscli.policy.base import Backend, Generation
from rodscli.policy.chat import FINAL_ANSWER, NO_CALL_ANSWER, ChatFormat, format_tool_call
from rodscli.stages.eval import EvalOptions, aggregate, evaluate, summarize, task_record
from rodscli.stages.rollout import RolloutOptions


def _episode(task_id: str, skill: str, outcome: float, progress: float, reason: str = "done", calls: int = 1) -> dict:
    return {"task_id": task_id, "skill": skill, "outcome": outcome, "progress": progress, "validity": 1.0,
            "calls": [{}] * calls, "finish_reason": reason, "policy_id": "p@1"}


def test_pass_at_k_of_one_task():
    eps = [_episode("t", "base", 0.0, 0.5), _episode("t", "base", 1.0, 1.0), _episode("t", "base", 0.0, 0.0, "max_tokens", 3)]
    r = task_record(eps, {"domain": "retail"}, "p@1", EvalOptions(k=3, greedy=False, iteration=4))
    assert r["success"] == 1.0  # one of three episodes succeeded
    assert r["success_mean"] == pytest.approx(1 / 3)
    assert r["progress"] == pytest.approx(0.5) and r["progress_best"] == 1.0
    assert r["n_calls"] == pytest.approx(5 / 3)
    assert r["finish_reasons"] == {"done": 2, "max_tokens": 1}
    assert (r["domain"], r["iteration"], r["k"], r["episodes"]) == ("retail", 4, 3, 3)
    failed = task_record([_episode("u", "base", 0.0, 0.25)] * 2, None, "p@1", EvalOptions(k=2, greedy=False))
    assert failed["success"] == 0.0 and failed["domain"] is None


def test_per_skill_and_overall_aggregates():
    cfg = EvalOptions(k=2, greedy=False)
    scored = [
        _episode("a", "base", 1.0, 1.0), _episode("a", "base", 0.0, 0.5),          # pass@2 1, progress .75
        _episode("b", "base", 0.0, 0.0), _episode("b", "base", 0.0, 0.5),          # pass@2 0, progress .25
        _episode("c", "miss_param", 0.0, 0.5), _episode("c", "miss_param", 0.0, 0.5),  # 0, .5
    ]
    rows = summarize(scored, {}, "p@1", cfg)
    assert [(r["kind"], r["key"]) for r in rows] == [("task", "a"), ("task", "b"), ("task", "c"),
                                                     ("skill", "base"), ("skill", "miss_param"), ("all", "all")]
    base, miss_param, overall = rows[3:]
    assert (base["n_tasks"], base["episodes"], base["success"], base["progress"]) == (2, 4, 0.5, 0.5)
    assert base["success_mean"] == pytest.approx(0.25)
    assert miss_param["success"] == 0.0 and miss_param["progress"] == pytest.approx(0.5)
    assert overall["success"] == pytest.approx(1 / 3) and overall["progress"] == pytest.approx(0.5)
    assert overall["progress_best"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert overall["skill"] is None and overall["task_id"] is None
    assert all(schemas.problems("eval", r) == [] for r in rows)
    # skills come in the paper's order whatever order the tasks came in
    assert [r["key"] for r in aggregate(list(reversed(rows[:3]))) if r["kind"] == "skill"] == ["base", "miss_param"]


def test_call_turns_count_the_turns_whose_reference_calls_and_the_ones_passed():
    """Turns whose reference is empty (ask, decline) are not call turns; a call turn is passed
    when its turn score is 1; task records average over k episodes, aggregates sum over tasks."""
    call = {"name": "f", "arguments": {}}
    task = {"domain": "retail", "reference": [[call], [], [call, call], [call]]}
    eps = [{**_episode("t", "base", 0.0, 0.5), "turn_scores": scores}
           for scores in ([1.0, 1.0, 0.5, 1.0], [1.0, 0.0, 1.0, 0.0])]  # 2 of 3, then 2 of 3
    r = task_record(eps, task, "p@1", EvalOptions(k=2, greedy=False))
    assert (r["call_turns"], r["call_turns_passed"]) == (3, 2.0)
    one = task_record([{**_episode("u", "base", 0.0, 0.0), "turn_scores": [0.0, 1.0]}], {"reference": [[call], []]},
                      "p@1", EvalOptions())
    assert (one["call_turns"], one["call_turns_passed"]) == (1, 0.0)  # the passed empty turn does not count
    overall = aggregate([r, one])[-1]
    assert (overall["call_turns"], overall["call_turns_passed"]) == (4, 2.0)
    assert all(schemas.problems("eval", x) == [] for x in (r, one, overall))
    # without the task's reference there is nothing to count: the aggregate leaves the fields out
    blind = task_record(eps, None, "p@1", EvalOptions(k=2, greedy=False))
    assert blind["call_turns"] is None and "call_turns" not in aggregate([blind, r])[-1]


def test_options_are_checked():
    with pytest.raises(OptionError, match="--no-greedy"):
        EvalOptions(k=4, greedy=True).check()
    with pytest.raises(OptionError):
        EvalOptions(k=0, greedy=False).check()


# ---------------------------------------------------------------------------------------
# real episodes: a scripted policy that follows the reference solution of some tasks


class ReferencePolicy(Backend):
    """Replies with the reference solution (one call per reply, then the closing answer) of
    the tasks in `solve`, and with a plain refusal on every other task."""

    name = "reference"
    policy_id = "reference@0"

    def __init__(self, tokenizer, tasks: list[dict], solve: set[str]):
        self.tokenizer, self.fmt = tokenizer, ChatFormat(tokenizer)
        self.tasks, self.solve = tasks, solve

    def replies(self, task: dict) -> list[str]:
        out = []
        for turn in task["reference"]:
            out += [format_tool_call(c["name"], c["arguments"]) for c in turn]
            out.append(FINAL_ANSWER if turn else NO_CALL_ANSWER)
        return out

    def generate(self, requests, stop_ids):
        gens = []
        for req in requests:
            text = self.fmt.decode(req.prompt_ids)
            task = next(t for t in self.tasks if t["user_turns"][0] in text)
            n_replies = text.count("<|im_start|>assistant") - 1  # the last one is the generation prompt
            reply = self.replies(task)[n_replies] if task["id"] in self.solve else "Sorry, I cannot help."
            ids = self.fmt.encode(reply) + [stop_ids[0]]
            gens.append(Generation(ids, [0.0] * len(ids), stopped=True))
        return gens


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    """A small real checkpoint (tokenizer trained on a few built-in tasks, a one-layer model)."""
    from rodscli.policy.tiny import InitPolicyOptions, init_policy

    out = tmp_path_factory.mktemp("policy") / "tiny"
    opts = InitPolicyOptions(vocab_size=1200, hidden_size=32, layers=1, heads=2, intermediate_size=64)
    init_policy(out, opts, tasks=seed_tasks(per_skill=2))
    return out


def _heldout(n_per_skill: int = 1) -> list[dict]:
    return seed_tasks("retail", seed=3, per_skill=n_per_skill)


def test_reference_episodes_succeed_and_others_fail(tiny_policy):
    from rodscli.policy.base import load_tokenizer

    tasks = _heldout()
    solve = {t["id"] for t in tasks if t["skill"] in ("base", "miss_param")}
    backend = ReferencePolicy(load_tokenizer(tiny_policy), tasks, solve)
    rows, scored = evaluate(tasks, backend, EvalOptions(iteration=2), RolloutOptions(max_tokens=100_000, max_new_tokens=400))
    by_key = {(r["kind"], r["key"]): r for r in rows}
    for t in tasks:
        r = by_key[("task", t["id"])]
        if t["id"] in solve:
            assert (r["success"], r["progress"]) == (1.0, 1.0), r
        else:
            assert r["success"] == 0.0 and r["progress"] < 1.0
    assert by_key[("skill", "base")]["success"] == 1.0 and by_key[("skill", "miss_func")]["success"] == 0.0
    assert by_key[("all", "all")]["success"] == pytest.approx(0.5)
    assert by_key[("all", "all")]["iteration"] == 2 and len(scored) == len(tasks)
    # call turns: every solved task passes all of its own, the refusals none
    for t in tasks:
        r, turns = by_key[("task", t["id"])], sum(1 for calls in t["reference"] if calls)
        assert (r["call_turns"], r["call_turns_passed"]) == (turns, turns if t["id"] in solve else 0)
    solved_turns = sum(1 for t in tasks if t["id"] in solve for calls in t["reference"] if calls)
    assert by_key[("all", "all")]["call_turns_passed"] == solved_turns > 0



class CallsWhereItShouldAsk(ReferencePolicy):
    """The reference solution, plus a call to a tool that does not exist in every turn whose
    reference is empty (where the agent should only ask or decline)."""

    def replies(self, task: dict) -> list[str]:
        out = []
        for turn in task["reference"]:
            out += [format_tool_call(c["name"], c["arguments"]) for c in turn] or [format_tool_call("no_such_tool", {})]
            out.append(FINAL_ANSWER if turn else NO_CALL_ANSWER)
        return out


def test_eval_scores_empty_turns_by_the_irrelevance_rule_it_is_given(tiny_policy):
    from rodscli.policy.base import load_tokenizer

    tasks = [t for t in _heldout() if t["skill"] == "miss_param"]
    assert tasks and all(any(not turn for turn in t["reference"]) for t in tasks)
    backend = CallsWhereItShouldAsk(load_tokenizer(tiny_policy), tasks, {t["id"] for t in tasks})
    ropts = RolloutOptions(max_tokens=100_000, max_new_tokens=400)
    success = {}
    for rule in ("v3", "official"):
        rows, _ = evaluate(tasks, backend, EvalOptions(irrelevance=rule), ropts)
        success[rule] = next(r for r in rows if r["kind"] == "all")["success"]
    assert success == {"v3": 0.0, "official": 1.0}
    with pytest.raises(OptionError, match="--irrelevance"):
        EvalOptions(irrelevance="v4").check()

def test_no_tasks_is_an_input_error(tiny_policy):
    from rodscli.policy.base import load_tokenizer

    with pytest.raises(InputError, match="no tasks"):
        evaluate([], ReferencePolicy(load_tokenizer(tiny_policy), [], set()), EvalOptions(), RolloutOptions())


def test_cli_greedy_and_pass_at_k_on_the_tiny_model(tiny_policy, tmp_path, capsys):
    tasks = tmp_path / "heldout.jsonl"
    records.write_records(tasks, _heldout(), "task")
    greedy, sampled = tmp_path / "greedy.parquet", tmp_path / "pass2.jsonl"
    common = ["--policy", str(tiny_policy), "--tasks", str(tasks), "--max-new-tokens", "8", "--max-tokens", "100000"]
    assert main(["--seed", "1", "eval", *common, "--out", str(greedy), "--iteration", "3", "--episodes", str(tmp_path / "ep.jsonl")]) == 0
    assert main(["--seed", "1", "eval", *common, "--out", str(sampled), "--no-greedy", "--k", "2"]) == 0
    g, s = records.read_all(greedy, "eval"), records.read_all(sampled, "eval")  # both validated against the schema
    for rows, k in ((g, 1), (s, 2)):
        assert [r["kind"] for r in rows] == ["task"] * 4 + ["skill"] * 4 + ["all"]
        overall = rows[-1]
        assert (overall["n_tasks"], overall["episodes"], overall["k"]) == (4, 4 * k, k)
        assert all(r["episodes"] == k for r in rows[:4])
    assert g[-1]["greedy"] is True and g[-1]["iteration"] == 3 and s[-1]["greedy"] is False
    assert len(records.read_all(tmp_path / "ep.jsonl", "scored")) == 4
    # greedy decoding is deterministic: the same policy gives the same records again
    again = tmp_path / "again.parquet"
    assert main(["--seed", "7", "eval", *common, "--out", str(again), "--iteration", "3"]) == 0
    assert records.read_all(again, "eval") == g
    # greedy with k > 1 is a user error, and nothing is written
    bad = tmp_path / "bad.parquet"
    assert main(["eval", *common, "--out", str(bad), "--k", "3"]) == 2
    assert "--no-greedy" in capsys.readouterr().err and not bad.exists()
