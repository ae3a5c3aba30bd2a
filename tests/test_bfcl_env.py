"""BFCL multi-turn: the 800 tasks, the safe ground-truth parser, and BFCL's real simulators."""

from __future__ import annotations

import collections
import time

import orjson
import pytest

from rodscli import records, schemas
from rodscli.cli import main
from rodscli.envs import bfcl
from rodscli.envs.base import (
    BAD_ARGUMENTS,
    TOOL_ERROR,
    UNKNOWN_TOOL,
    check_arguments,
    numbers_by_value,
    offered_tools,
    open_episode,
    replay_reference,
    state_hash,
    tool_name,
)
from rodscli.errors import OptionError


@pytest.fixture(scope="module")
def tasks() -> list[dict]:
    return bfcl.load_tasks()


def by_id(tasks: list[dict], bfcl_id: str) -> dict:
    return next(t for t in tasks if t["meta"]["bfcl_id"] == bfcl_id)


def test_800_schema_valid_tasks(tasks):
    assert len(tasks) == 800
    assert collections.Counter(t["skill"] for t in tasks) == {c: 200 for c in bfcl.CATEGORIES}
    assert len({t["id"] for t in tasks}) == 800
    for t in tasks:
        assert schemas.problems("task", t) == [], t["id"]
        assert t["env"] == t["domain"] == "bfcl"
        assert len(t["user_turns"]) == len(t["reference"])
        assert all(t["user_turns"]), t["id"]
        assert set(t["tools"]) >= {c["name"] for turn in t["reference"] for c in turn}


def test_conversion_of_a_miss_func_entry(tasks):
    t = by_id(tasks, "multi_turn_miss_func_0")
    # BFCL's ground truth: ["cd(folder='document')", "mkdir(dir_name='temp')", ...], ..., ["sort('final_report.pdf')"]
    assert t["reference"][0][0] == {"name": "cd", "arguments": {"folder": "document"}}
    assert t["reference"][2] == []  # the turn where the model must say sort is missing
    assert t["reference"][3] == [{"name": "sort", "arguments": {"file_name": "final_report.pdf"}}]
    assert t["withheld"] == [{"tool": "sort", "turn": 3}]
    assert t["user_turns"][3] == bfcl.ADDED_FUNCTIONS_PROMPT  # BFCL's holdout turn has no user text
    assert t["env_config"] == {"involved_classes": ["TwitterAPI", "GorillaFileSystem"], "long_context": False,
                               "check_arguments": False}
    assert t["meta"]["bfcl_id"] == "multi_turn_miss_func_0"
    with open_episode(t) as ep:
        assert "sort" not in {tool_name(s) for s in offered_tools(t, ep, 2)}
        assert "sort" in {tool_name(s) for s in offered_tools(t, ep, 3)}
        # not offered before turn 3, but BFCL's checker executes a call to it: so does rods
        out = ep.call("sort", {"file_name": "x"}, {tool_name(s) for s in offered_tools(t, ep, 2)})
        assert out.error is None and out.result != "Error: tool 'sort' is not available"
        assert not ep.refuses_withheld


def test_tool_released_too_late_is_not_withheld(tasks):
    # miss_func_49's ground truth calls tail in turn 1, but BFCL withholds it until turn 3
    t = by_id(tasks, "multi_turn_miss_func_49")
    assert "tail" not in {w["tool"] for w in t["withheld"]}
    assert t["meta"]["withheld_used_early"] == ["tail"]


def test_long_context_flag_reaches_the_simulator(tasks):
    t = next(t for t in tasks if t["skill"] == "long_context" and "GorillaFileSystem" in t["env_config"]["involved_classes"])
    short = dict(t, env_config=dict(t["env_config"], long_context=False))
    with open_episode(t) as a, open_episode(short) as b:
        assert len(orjson.dumps(a.snapshot())) > len(orjson.dumps(b.snapshot()))


def test_tool_schemas_use_json_schema_types():
    allowed = {"string", "integer", "number", "boolean", "array", "object", "null"}

    def walk(node):
        if isinstance(node, dict):
            t = node.get("type")
            for x in [t] if isinstance(t, str) else (t or []):
                assert x in allowed, node
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for cls in bfcl.CLASS_DOCS:
        for schema in bfcl.class_tools(cls):
            assert schema["type"] == "function"
            assert schema["function"]["parameters"]["type"] == "object"
            walk(schema["function"]["parameters"])
    mean = next(s for s in bfcl.class_tools("MathAPI") if tool_name(s) == "mean")
    assert mean["function"]["parameters"]["properties"]["numbers"] == {
        "type": "array", "items": {"type": "number"}, "description": mean["function"]["parameters"]["properties"]["numbers"]["description"]}
    edit = next(s for s in bfcl.class_tools("TicketAPI") if tool_name(s) == "edit_ticket")
    assert edit["function"]["parameters"]["properties"]["updates"]["type"] == "object"


def test_ground_truth_calls_pass_the_argument_check(tasks):
    for t in tasks:
        with open_episode(t) as ep:
            index = ep.tool_index()
            for turn in t["reference"]:
                for c in turn:
                    assert check_arguments(index[c["name"]], c["arguments"]) is None, (t["id"], c)


def test_parse_call_positional_keyword_and_literals():
    order = {"f": ["a", "b", "c"]}
    assert bfcl.parse_call("f(1, b=-2.5, c=(1, 2))", order) == {"name": "f", "arguments": {"a": 1, "b": -2.5, "c": [1, 2]}}
    assert bfcl.parse_call(" f(a={'k': [True, None]}) ", order) == {"name": "f", "arguments": {"a": {"k": [True, None]}}}
    assert bfcl.parse_call("g()", order) == {"name": "g", "arguments": {}}


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch /tmp/pwned')",
    "f(a=__import__('os').system('touch /tmp/pwned'))",
    "f(a=open('/etc/passwd').read())",
    "f(a=x)",
    "f(**{'a': 1})",
    "f(1, 2, 3, 4)",
    "f(1); g(2)",
    "obj.f(1)",
    "lambda: 1",
])
def test_parse_call_refuses_anything_but_literals(text, tmp_path):
    with pytest.raises(ValueError):
        bfcl.parse_call(text, {"f": ["a", "b", "c"]})


def test_code_in_a_call_executes_nothing(tasks, tmp_path):
    t = by_id(tasks, "multi_turn_base_0")
    marker = tmp_path / "pwned"
    with open_episode(t) as ep:
        before = state_hash(ep.snapshot())
        out = ep.call(f"__import__('os').system('touch {marker}')", {})
        assert out.error == UNKNOWN_TOOL
        out = ep.call("_load_scenario", {"scenario": {}})  # private methods are not tools
        assert out.error == UNKNOWN_TOOL
        for name in ("__init__", "__class__", "__dict__", "_current_dir", "root.contents", "GorillaFileSystem.cd",
                     "cd.__globals__", "cd()", "eval", "", None, ["cd"]):  # dunders, attribute paths, non-names
            assert ep.call(name, {}).error == UNKNOWN_TOOL, name
        assert ep.call("cd", f"__import__('os').system('touch {marker}')").error == BAD_ARGUMENTS
        out = ep.call("cd", {"folder": f"__import__('os').system('touch {marker}')"})
        assert out.error is None and "error" in out.result  # just a folder name that does not exist
        out = ep.call("cd", {"folder": "document", "x": 1})  # BFCL does not check arguments: the method refuses it
        assert out.error == TOOL_ERROR and "unexpected keyword argument" in out.result
        assert state_hash(ep.snapshot()) == before
    assert not marker.exists()


def test_episodes_never_share_state(tasks):
    t = by_id(tasks, "multi_turn_base_90")  # TwitterAPI keeps the argument lists it is given
    initial = orjson.dumps(t)
    with open_episode(t) as a, open_episode(t) as b:
        assert a.snapshot() == b.snapshot()
        a.call("post_tweet", {"content": "x", "tags": ["#a"], "mentions": ["@b"]})
        assert a.snapshot() != b.snapshot()
        with open_episode(t) as c:
            assert c.snapshot() == b.snapshot()
    replay_reference(t)
    assert orjson.dumps(t) == initial  # neither the initial state nor the reference was written into


def test_snapshot_is_public_state_without_parent_links(tasks):
    t = by_id(tasks, "multi_turn_base_0")
    with open_episode(t) as ep:
        snap = ep.snapshot()
        fs = snap["GorillaFileSystem"]["root"]
        assert fs["__class__"] == "Directory" and "parent" not in fs
        before = state_hash(snap)
        assert ep.call("cd", {"folder": "document"}).ok
        assert state_hash(ep.snapshot()) == before  # the current directory is private, as in BFCL's checker
        assert ep.call("mkdir", {"dir_name": "newdir"}).ok
        assert state_hash(ep.snapshot()) != before


def test_reference_replay_passes_and_is_deterministic(tasks):
    """Acceptance: 800/800 replays without call errors; a second independent replay (in
    reverse order) gives the same per-turn states and results."""
    start = time.perf_counter()
    first = {}
    for t in tasks:
        trace = replay_reference(t)
        assert trace.ok, (t["id"], trace.errors, trace.results)
        first[t["id"]] = (trace.state_hashes, trace.results)
    elapsed = time.perf_counter() - start
    for t in reversed(tasks):
        trace = replay_reference(t)
        assert (trace.state_hashes, trace.results) == first[t["id"]], t["id"]
    assert elapsed < 20, f"800 replays took {elapsed:.1f}s"


def test_split_is_the_papers_and_deterministic(tasks):
    train = bfcl.split_tasks(tasks, "train")
    test = bfcl.split_tasks(tasks, "test")
    assert len(train) == len(test) == 400
    assert collections.Counter(t["skill"] for t in train) == {c: 100 for c in bfcl.CATEGORIES}
    assert not {t["id"] for t in train} & {t["id"] for t in test}
    assert [t["id"] for t in bfcl.split_tasks(list(reversed(tasks)), "train")] == [t["id"] for t in train]
    other = bfcl.split_tasks(tasks, "train", seed=1)
    assert {t["id"] for t in other} != {t["id"] for t in train}
    assert len(bfcl.split_tasks(tasks, "all")) == 800
    with pytest.raises(OptionError):
        bfcl.split_tasks(tasks, "dev")
    with pytest.raises(OptionError):
        bfcl.load_tasks(["nope"])


def test_cli_tasks_bfcl(tmp_path):
    out = tmp_path / "test.parquet"
    assert main(["tasks", "bfcl", "--split", "test", "--categories", "miss_param,base", "--out", str(out)]) == 0
    got = records.read_all(out, "task")
    assert len(got) == 200
    assert {t["skill"] for t in got} == {"base", "miss_param"}
    assert all(t["profile"] and t["profile"]["ref_errors"] == 0 for t in got)
    expected = bfcl.split_tasks(bfcl.load_tasks(["base", "miss_param"]), "test")
    assert [t["id"] for t in got] == [t["id"] for t in expected]
    assert all(replay_reference(t).ok for t in got[:20])  # round trip through Parquet keeps tasks runnable
    assert main(["tasks", "bfcl", "--split", "dev", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert not (tmp_path / "x.jsonl").exists()


def test_long_context_episodes_do_not_share_module_level_state(tasks):
    """BFCL's long-context extras come from module-level data: one episode's writes must not reach the next."""
    t = next(t for t in tasks if t["skill"] == "long_context" and "TravelAPI" in t["env_config"]["involved_classes"])
    with open_episode(t) as a:
        before = a.snapshot_hash()
        state = a.instances["TravelAPI"].__dict__
        cards = state.get("credit_card_list") or {}
        assert cards, "a long-context TravelAPI episode has credit cards"
        for card in cards.values():  # a write the way a tool makes it: in place
            card["balance"] = card.get("balance", 0) - 100
            card["rods-marker"] = True
        assert a.snapshot_hash() != before
    with open_episode(t) as b:
        assert b.snapshot_hash() == before
        assert not any("rods-marker" in c for c in b.instances["TravelAPI"].credit_card_list.values())


def test_episodes_of_one_initial_state_are_private_copies(tasks):
    """Episodes are unpickled from one loaded state per initial state: each is a whole private
    copy (file-system trees, random generators), equal to a fresh load of the task."""
    t = next(t for t in tasks if t["skill"] == "base" and "GorillaFileSystem" in t["env_config"]["involved_classes"])
    with open_episode(t) as a:
        first = a.snapshot_hash()
        fs = a.instances["GorillaFileSystem"]
        fs.root.contents["rods-marker.txt"] = "x"  # a write into the nested tree, the way a tool makes one
        fs._current_dir = None
        assert a.snapshot_hash() != first
    with open_episode(t) as b:
        assert b.snapshot_hash() == first
        assert "rods-marker.txt" not in b.instances["GorillaFileSystem"].root.contents
        assert b.instances["GorillaFileSystem"]._current_dir is not None
    # the same simulator loaded the slow way (BFCL's own loader) is in the same state
    sim = bfcl.simulator_class("GorillaFileSystem")()
    sim._load_scenario(orjson.loads(orjson.dumps(t["initial_state"]["GorillaFileSystem"])), long_context=False)
    with open_episode(t) as c:
        assert bfcl._state(vars(sim)) == bfcl._state(vars(c.instances["GorillaFileSystem"]))


def test_tracked_random_draws_and_pickles_like_random():
    import pickle
    import random

    plain, tracked = random.Random(141053), bfcl.TrackedRandom.copy_of(random.Random(141053))
    assert [plain.randint(10000, 99999) for _ in range(5)] == [tracked.randint(10000, 99999) for _ in range(5)]
    assert plain.random() == tracked.random() and plain.choice("abcdef") == tracked.choice("abcdef")
    blob = pickle.dumps(tracked)
    assert pickle.dumps(tracked) == blob  # not drawn from: the same bytes
    assert pickle.dumps(pickle.loads(blob)) == blob  # unpickled, not drawn from: the same bytes
    ahead = random.Random()
    ahead.setstate(plain.getstate())
    assert pickle.loads(blob).random() == ahead.random()  # the first draw of an unpickled one
    copy = pickle.loads(blob)
    assert copy.getstate() == tracked.getstate() == plain.getstate()
    assert copy.gauss(0, 1) == plain.gauss(0, 1)  # gauss keeps a spare value in its state
    assert pickle.dumps(copy) != blob  # drawn from: its state moved on
    assert pickle.loads(pickle.dumps(copy)).getstate() == plain.getstate()
    # an episode's simulators draw from tracked generators (BFCL's seeded ids stay the same)
    t = next(t for t in bfcl.load_tasks(["base"]) if "TravelAPI" in t["env_config"]["involved_classes"])
    with open_episode(t) as ep:
        assert type(ep.instances["TravelAPI"]._random) is bfcl.TrackedRandom


def test_fresh_episode_knows_the_bytes_of_its_initial_state(tasks):
    import pickle

    t = next(t for t in tasks if t["skill"] == "long_context" and "TravelAPI" in t["env_config"]["involved_classes"])
    with open_episode(t) as ep:
        assert set(ep.initial_states) == set(t["env_config"]["involved_classes"]) - bfcl.STATELESS_CLASSES
        for name, blob in ep.initial_states.items():
            assert pickle.dumps(vars(ep.instances[name]), protocol=pickle.HIGHEST_PROTOCOL) == blob
        c = t["reference"][0][0]
        ep.call(c["name"], c["arguments"])
        assert ep.initial_states is None  # a call may have changed any of them


def test_bfcl_calls_the_simulator_whatever_the_argument_types(tasks):
    """As BFCL's checker does: no schema check before the call; the simulator's own exception
    is the tool error. A task may turn the schema check on (env_config.check_arguments)."""
    t = next(t for t in tasks if "MathAPI" in t["env_config"]["involved_classes"])
    with open_episode(t) as ep:
        assert not ep.checks_arguments
        out = ep.call("logarithm", {"value": "20", "base": 10, "precision": 5})
        assert out.error is None and "1.30" in out.result  # BFCL's simulator accepts the string
        assert ep.call("logarithm", {"value": 20}).error == TOOL_ERROR  # a missing argument: its TypeError
        assert ep.call("logarithm", ["20"]).error == BAD_ARGUMENTS  # not keyword arguments at all
    checked = dict(t, env_config=dict(t["env_config"], check_arguments=True))
    with open_episode(checked) as ep:
        assert ep.checks_arguments
        assert ep.call("logarithm", {"value": "20", "base": 10, "precision": 5}).error == BAD_ARGUMENTS


def test_numbers_compare_by_value_in_state_hashes(tasks):
    """BFCL compares states with `==`: the state after purchase_insurance(1500) and after
    purchase_insurance(1500.0) is the same state, and hashes the same."""
    t = next(t for t in tasks if any(c["name"] == "purchase_insurance" for turn in t["reference"] for c in turn))
    calls = [c for turn in t["reference"] for c in turn]
    k = next(i for i, c in enumerate(calls) if c["name"] == "purchase_insurance")
    hashes = []
    for cast in (int, float):
        with open_episode(t) as ep:
            for i, c in enumerate(calls[: k + 1]):
                args = dict(c["arguments"])
                if i == k:
                    args["insurance_cost"] = cast(args["insurance_cost"])
                assert ep.call(c["name"], args).ok
            hashes.append(ep.snapshot_hash())
            assert state_hash(ep.snapshot()) == hashes[-1]
    assert hashes[0] == hashes[1]
    assert state_hash({"a": 6500, "b": [1, True], 2: "x"}) == state_hash({"a": 6500.0, "b": [1.0, 1], 2.0: "x"})
    assert state_hash({"a": 6500.5}) != state_hash({"a": 6500})
    assert numbers_by_value({(1, 2.0): "x", 3.0: [True]}) == {(1, 2.0): "x", 3: [1]}  # a tuple key stays hashable
    assert bfcl._state({1.0: "a"}) == bfcl._state({True: "a"}) == bfcl._state({1: "a"}) == {"1": "a"}
    assert bfcl._state({(1, 2): "c"}) == {"(1, 2)": "c"}
