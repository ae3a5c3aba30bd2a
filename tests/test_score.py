"""`rods score` on trajectories built by hand and executed in real episodes (pyclass,
BFCL, built-in): the reference scores 1.0, and each deliberate flaw costs what the rules say."""

from __future__ import annotations

import orjson
import pytest

from rodscli import records, schemas
from rodscli.cli import main
from rodscli.envs.base import open_episode, replay_reference, state_hash
from rodscli.errors import InputError, OptionError
from rodscli.rewards import efficiency_budget
from rodscli.stages.score import ScoreConfig, reference_turns, score, scripted_rollout


class Shop:
    """A tiny stateful shop: stock per item and a list of orders."""

    def __init__(self):
        self.stock: dict = {}
        self.orders: list = []

    def load_scenario(self, config):  # no docstring: not a tool
        # copies, so that an episode never writes into the task's initial_state
        self.stock = dict(config.get("stock", {}))
        self.orders = [dict(o) for o in config.get("orders", [])]

    def get_stock(self, item: str) -> int:
        """How many units of an item are in stock.

        Args:
            item: the item name.
        """
        return self.stock.get(item, 0)

    def restock(self, item: str, qty: int) -> str:
        """Add units of an item to the stock.

        Args:
            item: the item name.
            qty: how many units.
        """
        self.stock[item] = self.stock.get(item, 0) + qty
        return f"{item}: {self.stock[item]}"

    def order(self, item: str, qty: int) -> dict:
        """Order units of an item.

        Args:
            item: the item name.
            qty: how many units.
        """
        if self.stock.get(item, 0) < qty:
            raise ValueError(f"not enough {item}")
        self.stock[item] -= qty
        self.orders.append({"item": item, "qty": qty})
        return {"order_id": len(self.orders), "item": item, "qty": qty}


def shop_task() -> dict:
    def c(name, **arguments):
        return {"name": name, "arguments": arguments}

    return {
        "id": "shop-0", "env": "pyclass", "domain": "tests.shop", "skill": "miss_param", "origin": "seed",
        "parent_id": None, "generation": 0,
        "user_turns": ["How many apples?", "Restock 5 pears, then order 2 apples.", "Apples left?", "Order some bananas."],
        "initial_state": {"Shop": {"stock": {"apple": 3, "pear": 1}, "orders": []}},
        "env_config": {"classes": [f"{Shop.__module__}:Shop"], "loader": "load_scenario"},
        "tools": ["get_stock", "order", "restock"],
        "withheld": [],
        "reference": [
            [c("get_stock", item="apple")],
            [c("restock", item="pear", qty=5), c("order", item="apple", qty=2)],
            [c("get_stock", item="apple")],
            [],  # how many bananas? the agent should ask
        ],
    }


def scored(task, turns, **cfg):
    out = next(score([scripted_rollout(task, turns)], [task], ScoreConfig(**cfg)))
    assert schemas.problems("scored", out) == []
    return out


def read_only(task, turns, t, k):
    """Whether call k of turn t leaves the public state as it found it (state-hash check)."""
    with open_episode(task) as ep:
        for turn, calls in enumerate(turns[: t + 1]):
            for i, c in enumerate(calls):
                before = state_hash(ep.snapshot())
                ep.call(c["name"], c["arguments"])
                if (turn, i) == (t, k):
                    return state_hash(ep.snapshot()) == before
    return False


def check_acceptance(task: dict, read_call: dict, mutation: dict) -> None:
    """The issue's five hand-built trajectories on one task (see the module doc)."""
    ref = reference_turns(task)
    n_turns, n_ref = len(ref), sum(map(len, ref))
    trace = replay_reference(task)
    assert trace.ok, f"{task['id']}: the reference itself fails"

    # 1. the reference trajectory scores 1.0 on every reward
    perfect = scored(task, ref, reward="prove")
    assert perfect["turn_scores"] == [1] * n_turns
    assert perfect["progress"] == perfect["outcome"] == perfect["reward"] == perfect["prove"] == 1.0
    assert (perfect["validity"], perfect["coverage"], perfect["name_precision"], perfect["arg_accuracy"]) == (1, 1, 1, 1)
    assert perfect["efficiency"] == 0.0 and perfect["format_penalty"] == 0.0

    # 2. dropping the last call of the last turn fails that turn only (its result is unique)
    last = max(t for t in range(n_turns) if ref[t])
    others = [r for turn in trace.results for r in turn]
    assert others.count(trace.results[last][-1]) == 1, "precondition: the dropped result is unique"
    dropped = [list(calls) for calls in ref]
    dropped[last].pop()
    # (later turns could only fail through a state change, and there is none after it)
    assert last == n_turns - 1 or read_only(task, ref, last, len(ref[last]) - 1)
    s = scored(task, dropped)
    assert s["turn_scores"] == [int(t != last) for t in range(n_turns)]
    assert s["progress"] == pytest.approx(sum(s["turn_scores"]) / n_turns) and s["outcome"] == 0.0

    # 3. extra harmless reads: free within the budget B, penalized beyond it; the turns still pass
    first = min(t for t in range(n_turns) if ref[t])
    budget = efficiency_budget(n_ref, 0.5)
    for extra, penalty in ((budget - n_ref, 0.0), (budget - n_ref + 1, -0.5 / budget)):
        padded = [list(calls) for calls in ref]
        padded[first] += [read_call] * extra
        s = scored(task, padded, reward="prove")
        assert s["turn_scores"] == [1] * n_turns
        assert s["progress"] == 1.0
        assert s["efficiency"] == pytest.approx(penalty)
        assert s["validity"] == 1.0
    assert s["prove"] < 1.0

    # 4. a state change the reference did not make fails the turn (and the turns before still pass)
    mutated = [list(calls) for calls in ref]
    mutated[first].append(mutation)
    s = scored(task, mutated)
    assert s["turn_scores"][:first] == [1] * first and s["turn_scores"][first] == 0

    # 5. a read made at the end of turn t-1 counts for turn t's result check
    moved = None
    for t in range(1, n_turns):
        # (turn t-1 must have reference calls: a call in an empty turn fails it, see below)
        if ref[t - 1] and ref[t] and read_only(task, ref, t, 0) and others.count(trace.results[t][0]) == 1:
            moved = t
            break
    assert moved is not None, f"{task['id']}: no turn starts with a read-only call"
    early = [list(calls) for calls in ref]
    early[moved - 1].append(early[moved].pop(0))
    if not early[moved]:  # a turn whose reference makes calls fails with no call (as in BFCL): a harmless read
        assert scored(task, early)["turn_scores"][moved] == 0
        early[moved].append(read_call)
    assert scored(task, early)["turn_scores"] == [1] * n_turns
    skipped = [list(calls) for calls in ref]
    skipped[moved].pop(0)
    assert scored(task, skipped)["turn_scores"][moved] == 0  # the same call, never made: fails


def test_acceptance_pyclass():
    task = shop_task()
    check_acceptance(task, {"name": "get_stock", "arguments": {"item": "pear"}},
                     {"name": "restock", "arguments": {"item": "kiwi", "qty": 1}})


def eligible(task: dict) -> bool:
    """Whether `check_acceptance` can build its trajectories on a task: the reference runs
    without error, its last result is unique, and some turn after the first starts with a
    read-only call whose result is unique (so moving or dropping it is observable)."""
    trace = replay_reference(task)
    ref = reference_turns(task)
    if not trace.ok or not ref[-1] or task.get("withheld"):
        return False
    flat = [r for turn in trace.results for r in turn]
    if flat.count(trace.results[-1][-1]) != 1:
        return False
    return any(ref[t - 1] and ref[t] and flat.count(trace.results[t][0]) == 1 and read_only(task, ref, t, 0)
               for t in range(1, len(ref)))


def test_acceptance_bfcl():
    from rodscli.envs import bfcl

    tasks = [t for t in bfcl.load_tasks(["base"])[:40] if "GorillaFileSystem" in t["env_config"]["involved_classes"]]
    chosen = [t for t in tasks if eligible(t)][:2]
    assert len(chosen) == 2
    for task in chosen:
        check_acceptance(task, {"name": "pwd", "arguments": {}},
                         {"name": "touch", "arguments": {"file_name": "rods_extra_file.txt"}})


# a harmless read and an unwanted state change per built-in domain (ids exist in every seed state)
BUILTIN_PROBES = {
    "retail": ({"name": "get_customer", "arguments": {"customer_id": "C-0001"}},
               {"name": "restock", "arguments": {"product_id": "P-0001", "quantity": 1}}),
    "workspace": ({"name": "read_file", "arguments": {"file_id": "F-0001"}},
                  {"name": "create_folder", "arguments": {"name": "rods-extra"}}),
}


@pytest.mark.parametrize("domain", sorted(BUILTIN_PROBES))
def test_acceptance_builtin(domain):
    from rodscli.envs.builtin import seed_tasks

    read_call, mutation = BUILTIN_PROBES[domain]
    chosen = []
    for task in seed_tasks(domain, per_skill=6):
        if task["skill"] in {t["skill"] for t in chosen} or not eligible(task):
            continue
        # the probes are what they claim on this task: the read changes nothing, the write does
        with open_episode(task) as ep:
            before = state_hash(ep.snapshot())
            assert ep.call(read_call["name"], read_call["arguments"]).error is None
            assert state_hash(ep.snapshot()) == before
            assert ep.call(mutation["name"], mutation["arguments"]).error is None
            assert state_hash(ep.snapshot()) != before
        check_acceptance(task, read_call, mutation)
        chosen.append(task)
    # base, miss_param and long_context (miss_func withholds a tool, which eligible() skips)
    assert len(chosen) >= 3, [t["id"] for t in chosen]


def check_empty_turns(task: dict, read_call: dict) -> None:
    """A turn whose reference is empty (ask for the missing value / say the function is
    missing) passes only when the agent makes no call in it; the other turns are unaffected."""
    ref = reference_turns(task)
    empty = [t for t, calls in enumerate(ref) if not calls]
    assert empty, f"{task['id']}: no empty reference turn"
    assert scored(task, ref)["turn_scores"] == [1] * len(ref)
    for t in empty:
        talkative = [list(calls) for calls in ref]
        talkative[t].append(read_call)
        assert scored(task, talkative)["turn_scores"] == [int(u != t) for u in range(len(ref))], (task["id"], t)
        # an unparseable call is no call (BFCL's decoder drops it): the turn still passes
        garbled = [list(calls) for calls in ref]
        garbled[t].append({"raw": "<tool_call>{not json"})
        assert scored(task, garbled)["turn_scores"][t] == 1


@pytest.mark.parametrize("skill", ["miss_func", "miss_param"])
def test_empty_reference_turns_bfcl(skill):
    from rodscli.envs import bfcl

    tasks = [t for t in bfcl.load_tasks([skill])[:30]
             if "GorillaFileSystem" in t["env_config"]["involved_classes"] and replay_reference(t).ok]
    for task in tasks[:2]:
        check_empty_turns(task, {"name": "pwd", "arguments": {}})
    assert len(tasks) >= 2


@pytest.mark.parametrize("skill", ["miss_func", "miss_param"])
@pytest.mark.parametrize("domain", sorted(BUILTIN_PROBES))
def test_empty_reference_turns_builtin(domain, skill):
    from rodscli.envs.builtin import seed_tasks

    tasks = [t for t in seed_tasks(domain, per_skill=3) if t["skill"] == skill]
    assert tasks
    for task in tasks:
        check_empty_turns(task, BUILTIN_PROBES[domain][0])


def test_reference_is_replayed_once_per_task(monkeypatch):
    """G rollouts of a task replay its reference once with the cache, G times without."""
    from rodscli.envs.builtin import seed_tasks
    from rodscli.stages import score as score_stage

    tasks = seed_tasks("retail", per_skill=1)[:2] + [shop_task()]
    group = 4
    rollouts = [scripted_rollout(t, reference_turns(t), sample_index=i) for i in range(group) for t in tasks]
    replays: list[str] = []
    real = score_stage.replay_reference

    def counting(task, *args, **kwargs):
        replays.append(task["id"])
        return real(task, *args, **kwargs)

    monkeypatch.setattr(score_stage, "replay_reference", counting)
    on = list(score(rollouts, tasks, ScoreConfig(cache=True)))
    assert sorted(replays) == sorted(t["id"] for t in tasks)
    replays.clear()
    off = list(score(rollouts, tasks, ScoreConfig(cache=False)))
    assert len(replays) == group * len(tasks)
    assert on == off and {s["reward"] for s in on} == {1.0}


def test_prove_components_by_hand():
    task = shop_task()
    turns = [
        [{"name": "get_stock", "arguments": {"item": "apple"}}, {"raw": "<tool_call>{not json"}],
        [{"name": "order", "arguments": {"item": "apple", "qty": 1}},  # wrong quantity
         {"name": "restock", "arguments": {"item": "pear", "qty": "five"}},  # bad type: not executed
         {"name": "sell", "arguments": {}}],  # unknown tool
        [],
    ]
    s = scored(task, turns, reward="prove")
    # turn 0: state unchanged and '3' obtained -> pass; turn 1: wrong state; turn 2: the state
    # still differs (turn 1's wrong order); turn 3 never reached
    assert s["turn_scores"] == [1, 0, 0, 0]
    assert s["progress"] == 0.25 and s["n_turns_reached"] == 3
    # validity per call: 1, 0 (unparseable), 1, 1/3 (name only), 0 -> 7/3 / 5
    assert s["validity"] == pytest.approx(7 / 15)
    # chain get_stock -> restock -> order -> get_stock: get_stock covered; restock failed -> the rest lost
    assert s["coverage"] == pytest.approx(1 / 4)
    # named calls: get_stock, order, restock in the reference, sell not -> 3/4
    assert s["name_precision"] == pytest.approx(3 / 4)
    assert s["arg_accuracy"] == 1.0  # the one matched pair (get_stock apple) is exact
    assert s["format_penalty"] == pytest.approx(-1 / 5)
    # n_ref = 4, B = 6, 5 calls: no penalty
    assert s["efficiency"] == 0.0
    expected = 0.2 * 7 / 15 + 0.4 * 0.25 + 0.2 * 0.75 + 0.2 * 1.0 - 0.2
    assert s["prove"] == pytest.approx(expected) and s["reward"] == s["prove"]


def test_cache_gives_the_same_scores_and_score_is_deterministic():
    task = shop_task()
    rollouts = [scripted_rollout(task, reference_turns(task), sample_index=i) for i in range(3)]
    rollouts.append(scripted_rollout(task, reference_turns(task)[:2], sample_index=3))
    on = list(score(rollouts, [task], ScoreConfig(cache=True)))
    off = list(score(rollouts, [task], ScoreConfig(cache=False)))
    assert on == off
    assert [s["reward"] for s in on] == [1.0, 1.0, 1.0, 0.5]


def test_user_errors():
    task = shop_task()
    r = scripted_rollout(task, reference_turns(task))
    with pytest.raises(InputError, match="not in the tasks file"):
        list(score([{**r, "task_id": "nope"}], [task]))
    with pytest.raises(InputError, match="user turns"):
        list(score([{**r, "n_user_turns": 2}], [task]))
    with pytest.raises(OptionError, match="--reward"):
        list(score([r], [task], ScoreConfig(reward="best")))


def test_cli_score_end_to_end(tmp_path, capsys):
    task = shop_task()
    tasks, rollouts = tmp_path / "tasks.jsonl", tmp_path / "rollouts.parquet"
    records.write_records(tasks, [task], "task")
    records.write_records(rollouts, [scripted_rollout(task, reference_turns(task)),
                                     scripted_rollout(task, reference_turns(task)[:3], sample_index=1)], "rollout")
    out = tmp_path / "scored.jsonl"
    assert main(["score", "--rollouts", str(rollouts), "--tasks", str(tasks), "--out", str(out), "--reward", "outcome"]) == 0
    rows = records.read_all(out, "scored")
    assert [r["reward"] for r in rows] == [1.0, 0.0]
    assert [r["progress"] for r in rows] == [1.0, 0.75]
    assert {r["reward_name"] for r in rows} == {"outcome"}
    assert records.read_provenance(out)["inputs"]
    assert main(["score", "--rollouts", str(rollouts), "--tasks", str(tasks), "--out", "-", "--weights", "bogus=1",
                 "--reward", "prove"]) == 2
    assert "--weights" in capsys.readouterr().err
    # stdout stays clean JSONL
    assert main(["-q", "score", "--rollouts", str(rollouts), "--tasks", str(tasks), "--out", "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [orjson.loads(x)["reward"] for x in lines] == [1.0, 0.75]


def test_cli_score_takes_several_task_files_and_the_irrelevance_rule(tmp_path, capsys):
    train, test = shop_task(), {**shop_task(), "id": "shop-1"}
    files = {"train": tmp_path / "train.jsonl", "test": tmp_path / "test.parquet"}
    records.write_records(files["train"], [train], "task")
    records.write_records(files["test"], [test], "task")
    talkative = reference_turns(test)
    talkative[3].append({"name": "get_stock", "arguments": {"item": "apple"}})  # a call where the reference has none
    rollouts = tmp_path / "rollouts.jsonl"
    records.write_records(rollouts, [scripted_rollout(train, reference_turns(train)), scripted_rollout(test, talkative)], "rollout")
    out = tmp_path / "scored.jsonl"
    args = ["score", "--rollouts", str(rollouts), "--tasks", str(files["train"]), "--tasks", str(files["test"]), "--out", str(out)]
    assert main(args) == 0
    assert [r["turn_scores"] for r in records.read_all(out, "scored")] == [[1, 1, 1, 1], [1, 1, 1, 0]]  # v3 by default
    assert len(records.read_provenance(out)["inputs"]) == 3
    assert main([*args, "--irrelevance", "official"]) == 0
    assert [r["turn_scores"] for r in records.read_all(out, "scored")] == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert main([*args, "--irrelevance", "v4"]) == 2
    assert "--irrelevance" in capsys.readouterr().err
    # one task file alone does not have every task; the same id with another content is refused
    assert main(["score", "--rollouts", str(rollouts), "--tasks", str(files["train"]), "--out", str(out)]) == 2
    other = tmp_path / "other.jsonl"
    records.write_records(other, [{**test, "user_turns": ["a", "b", "c", "d"]}], "task")
    assert main([*args, "--tasks", str(other)]) == 2
    err = capsys.readouterr().err
    assert "differs" in err and "other.jsonl" in err
