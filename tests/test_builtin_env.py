"""Built-in domains (retail, workspace): tools with real dependencies, the seed tasks, replay,
isolation, and calls that carry code or mistakes."""

from __future__ import annotations

import collections
import re

import orjson
import pytest

from rodscli import records, schemas
from rodscli.cli import main
from rodscli.envs.base import (
    BAD_ARGUMENTS,
    TOOL_ERROR,
    UNKNOWN_TOOL,
    WITHHELD,
    offered_tools,
    open_episode,
    replay_reference,
    state_hash,
    tool_name,
)
from rodscli.envs.builtin import DOMAINS, domain_tools, new_episode, seed_tasks
from rodscli.schemas import SKILLS
from rodscli.stages.tasks import replay_tasks, task_stats

ID = re.compile(r"\b[A-Z]-\d{4}\b")


@pytest.fixture(scope="module")
def seeds() -> list[dict]:
    return seed_tasks()


def task_of(seeds: list[dict], domain: str, skill: str = "base") -> dict:
    return next(t for t in seeds if t["domain"] == domain and t["skill"] == skill)


def result(episode, tool: str, /, **arguments):
    out = episode.call(tool, arguments)
    assert out.ok, (tool, arguments, out.result)
    return orjson.loads(out.result)


def test_each_domain_has_at_least_ten_tools():
    for domain in DOMAINS:
        names = [tool_name(t) for t in domain_tools(domain)]
        assert len(names) >= 10, domain
        assert all(t["function"]["description"] for t in domain_tools(domain))


def test_retail_ids_and_state_flow_from_call_to_call(seeds):
    ep = open_episode(task_of(seeds, "retail"))
    sim = ep.instances["Retail"]
    customer = next(iter(sim.customers.values()))
    product = next(p for p in sim.products.values() if p["stock"] >= 1)
    # ids are only known from a lookup: a made-up id fails
    assert ep.call("create_order", {"customer_id": "C-9999"}).error == TOOL_ERROR
    cid = result(ep, "find_customer", name=customer["name"])["customer_id"]
    found = result(ep, "find_product", name=product["name"])
    oid = result(ep, "create_order", customer_id=cid)["order_id"]
    # state set up by one call is read by the next: shipping needs a placed order
    assert ep.call("ship_order", {"order_id": oid, "carrier": "UPS"}).error == TOOL_ERROR
    result(ep, "add_item", order_id=oid, product_id=found["product_id"], quantity=1)
    placed = result(ep, "place_order", order_id=oid)
    assert result(ep, "find_product", name=product["name"])["stock"] == found["stock"] - 1
    tracking = result(ep, "ship_order", order_id=oid, carrier="UPS")["tracking"]
    assert result(ep, "get_order", order_id=oid)["tracking"] == tracking
    credit = result(ep, "get_customer", customer_id=cid)["store_credit"]
    refund = result(ep, "refund_order", order_id=oid, reason="damaged")
    assert refund["amount"] == placed["total"]
    assert result(ep, "get_customer", customer_id=cid)["store_credit"] == round(credit + placed["total"], 2)
    assert {"order_id": oid, "status": "refunded", "total": placed["total"]} in result(ep, "list_orders", customer_id=cid)
    ep.close()


def test_workspace_ids_and_state_flow_from_call_to_call(seeds):
    ep = open_episode(task_of(seeds, "workspace"))
    sim = ep.instances["Workspace"]
    folder = sim.folders[0]
    contact = next(iter(sim.contacts.values()))
    fid = result(ep, "create_file", folder=folder, name="zz-notes.txt", content="one")["file_id"]
    assert result(ep, "find_file", name="zz-notes.txt", folder=folder)["file_id"] == fid
    result(ep, "append_to_file", file_id=fid, text="two")
    assert result(ep, "read_file", file_id=fid)["content"].splitlines() == ["one", "two"]
    kid = result(ep, "find_contact", name=contact["name"])["contact_id"]
    result(ep, "share_file", file_id=fid, contact_id=kid)
    eid = result(ep, "create_event", title="zz sync", day="2031-01-02", start="09:00", minutes=30)["event_id"]
    result(ep, "invite", event_id=eid, contact_id=kid)
    result(ep, "attach_file", event_id=eid, file_id=fid)
    event = result(ep, "get_event", event_id=eid)
    assert kid in str(event) and fid in str(event)
    # the slot is taken now: a second event there is refused
    assert ep.call("create_event", {"title": "clash", "day": "2031-01-02", "start": "09:15", "minutes": 30}).error == TOOL_ERROR
    assert [e["event_id"] for e in result(ep, "list_events", day="2031-01-02")] == [eid]
    ep.close()


def test_seed_tasks_depend_across_calls_and_turns(seeds):
    """The reference calls of the seeds use >= 10 tools per domain in dependency edges,
    both parameter-flow and state edges, within and across turns."""
    for domain in DOMAINS:
        tasks = [t for t in seeds if t["domain"] == domain]
        linked, kinds, cross = set(), collections.Counter(), 0
        for t in tasks:
            p = t["profile"]
            for i, j, kind in p["edges"]:
                linked |= {p["tools"][i], p["tools"][j]}
                kinds[kind] += 1
            cross += p["cross_turn_refs"]
        assert len(linked) >= 10, (domain, linked)
        assert kinds["flow"] > 100 and kinds["state"] > 100, kinds
        assert cross > 50
        assert max(t["profile"]["depth"] for t in tasks) >= 5


def test_seed_tasks_shape(seeds):
    assert len(seeds) >= 400
    assert len({t["id"] for t in seeds}) == len(seeds)
    counts = collections.Counter((t["domain"], t["skill"]) for t in seeds)
    assert set(counts) == {(d, s) for d in DOMAINS for s in SKILLS}
    for t in seeds:
        assert schemas.problems("task", t) == [], t["id"]
        assert 1 <= len(t["user_turns"]) <= 5, t["id"]
        assert len(t["user_turns"]) == len(t["reference"])
        assert 1 <= sum(len(calls) for calls in t["reference"]) <= 8, t["id"]
        assert not any(ID.search(text) for text in t["user_turns"]), t["id"]  # ids must be looked up
        assert t["origin"] == "seed" and t["profile"]["ref_errors"] == 0
        empty = [k for k, calls in enumerate(t["reference"]) if not calls]
        if t["skill"] == "miss_func":
            (w,) = t["withheld"]
            assert empty == [w["turn"] - 1]  # the turn where the agent must say the tool is missing
            assert w["tool"] in {c["name"] for c in t["reference"][w["turn"]]}
        elif t["skill"] == "miss_param":
            assert len(empty) == 1 and not t["withheld"]  # the turn where the agent must ask
        else:
            assert not empty and not t["withheld"]
    long = [len(orjson.dumps(t["initial_state"])) for t in seeds if t["skill"] == "long_context"]
    base = [len(orjson.dumps(t["initial_state"])) for t in seeds if t["skill"] == "base"]
    assert min(long) > 2 * max(base)  # long_context worlds carry many distractors


def test_seed_tasks_are_deterministic_in_the_seed():
    a = seed_tasks("retail", seed=0, per_skill=3)
    assert orjson.dumps(a) == orjson.dumps(seed_tasks("retail", seed=0, per_skill=3))
    b = seed_tasks("retail", seed=1, per_skill=3)
    assert orjson.dumps(a) != orjson.dumps(b)
    # tasks of several seeds mix without id clashes; seed 0 keeps the plain ids
    assert len({t["id"] for t in a + b}) == len(a) + len(b)
    assert a[0]["id"] == "retail-base-0000" and b[0]["id"] == "retail-base-0000-s1"


def test_all_seed_tasks_replay_and_twice_give_equal_states(seeds):
    report = replay_tasks(seeds)
    assert report.ok, [str(f) for f in report.failures[:5]]
    assert report.n_tasks == len(seeds) and report.n_calls == sum(t["profile"]["n_calls"] for t in seeds)


def test_snapshot_hash_is_the_hash_of_the_snapshot(seeds):
    for t in seeds[::7]:
        assert replay_reference(t).state_hashes == replay_reference(t, keep_snapshots=True).state_hashes, t["id"]


def test_a_broken_reference_fails_replay(seeds):
    task = orjson.loads(orjson.dumps(task_of(seeds, "retail")))
    task["reference"][0][0] = {"name": "get_order", "arguments": {"order_id": "O-9999"}}
    (failure,) = replay_tasks([task], ["t.jsonl:7"]).failures
    assert failure.where == "t.jsonl:7" and "turn 0" in failure.message and "tool_error" in failure.message
    unknown = {**task, "env": "garden"}  # a file read without validation: a failure, not a crash
    (failure,) = replay_tasks([unknown], ["t.jsonl:8"]).failures
    assert "unknown environment family 'garden'" in failure.message


def test_episodes_never_share_state(seeds):
    task = task_of(seeds, "retail")
    initial = orjson.dumps(task)
    with open_episode(task) as a, open_episode(task) as b:
        assert a.snapshot() == b.snapshot()
        pid = next(iter(a.instances["Retail"].products))
        result(a, "restock", product_id=pid, quantity=5)
        result(a, "set_price", product_id=pid, price=1.5)
        assert a.snapshot() != b.snapshot()
        assert b.snapshot() == open_episode(task).snapshot()
    assert orjson.dumps(task) == initial  # the task's initial state was not written into
    state = {"folders": ["a"]}
    ep = new_episode("workspace", state)
    result(ep, "create_folder", name="b")
    assert state == {"folders": ["a"]}


HOSTILE_NAMES = [
    "__import__('os').system('touch {marker}')",
    "__init__", "__class__", "__dict__", "__getattribute__", "_customer", "_check_slot",
    "customers.clear", "Retail.restock", "restock.__globals__", "find_customer()", "eval", "exec",
    "", None, 3, ["restock"],
]


@pytest.mark.parametrize("domain,lookup", [("retail", "find_customer"), ("workspace", "find_contact")])
def test_code_in_a_call_executes_nothing(domain, lookup, seeds, tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    with open_episode(task_of(seeds, domain)) as ep:
        before = state_hash(ep.snapshot())
        for name in HOSTILE_NAMES:
            name = name.format(marker=marker) if isinstance(name, str) else name
            assert ep.call(name, {}).error == UNKNOWN_TOOL, name
        # code as an argument value is just text that names nothing
        out = ep.call(lookup, {"name": code})
        assert out.error == TOOL_ERROR and ("no contact named" in out.result or "no customer named" in out.result)
        # code as an argument name is an unexpected argument; code as the arguments is not an object
        assert ep.call(lookup, {"name": "x", "__class__": code}).error == BAD_ARGUMENTS
        assert ep.call(lookup, code).error == BAD_ARGUMENTS
        assert state_hash(ep.snapshot()) == before
    assert not marker.exists()


def test_model_mistakes_are_error_results(seeds):
    with open_episode(task_of(seeds, "retail")) as ep:
        pid = next(iter(ep.instances["Retail"].products))
        assert ep.call("refund_everything", {}).error == UNKNOWN_TOOL
        assert ep.call("restock", {"product_id": pid}).error == BAD_ARGUMENTS  # missing quantity
        assert ep.call("restock", {"product_id": pid, "quantity": "5"}).error == BAD_ARGUMENTS  # mistyped
        assert ep.call("restock", {"product_id": pid, "quantity": True}).error == BAD_ARGUMENTS
        assert ep.call("restock", {"product_id": pid, "quantity": 1, "note": "x"}).error == BAD_ARGUMENTS
        out = ep.call("restock", {"product_id": pid, "quantity": 0})
        assert out.error == TOOL_ERROR and out.result == "Error: ValueError: quantity must be at least 1"
        assert ep.call("set_price", {"product_id": pid, "price": 3}).ok  # an int is a number


def test_withheld_tool_is_refused_until_its_turn(seeds):
    task = task_of(seeds, "workspace", "miss_func")
    (w,) = task["withheld"]
    with open_episode(task) as ep:
        early = {tool_name(t) for t in offered_tools(task, ep, w["turn"] - 1)}
        assert w["tool"] not in early
        assert w["tool"] in {tool_name(t) for t in offered_tools(task, ep, w["turn"])}
        args = task["reference"][w["turn"]][0]["arguments"] if task["reference"][w["turn"]][0]["name"] == w["tool"] else {}
        assert ep.call(w["tool"], args, early).error == WITHHELD


def test_cli_builtin_replay_and_stats(tmp_path, capsys):
    out = tmp_path / "retail.parquet"
    assert main(["--seed", "3", "tasks", "builtin", "--domain", "retail", "--per-skill", "4", "--out", str(out)]) == 0
    tasks = records.read_all(out, "task")
    assert len(tasks) == 16 and {t["domain"] for t in tasks} == {"retail"}
    made = seed_tasks("retail", seed=3, per_skill=4)  # the same, less the null optional fields Parquet leaves out
    assert tasks == [{k: v for k, v in t.items() if v is not None or k in tasks[0]} for t in made]
    assert main(["tasks", "replay", str(out)]) == 0
    capsys.readouterr()
    assert main(["tasks", "stats", str(out), "--json"]) == 0
    stats = orjson.loads(capsys.readouterr().out)
    assert stats == orjson.loads(orjson.dumps(task_stats(tasks), option=orjson.OPT_NON_STR_KEYS))
    assert stats["skill"] == {s: 4 for s in SKILLS} and stats["domain"] == {"retail": 16}
    assert sum(stats["depth"].values()) == sum(stats["turns"].values()) == sum(stats["calls"].values()) == 16
    assert main(["tasks", "stats", str(out)]) == 0
    table = capsys.readouterr().out
    assert "retail" in table and "long_context" in table and "depth" in table


def test_cli_builtin_bad_options_leave_no_output(tmp_path):
    out = tmp_path / "t.jsonl"
    assert main(["tasks", "builtin", "--domain", "garden", "--out", str(out)]) == 2
    assert main(["tasks", "builtin", "--per-skill", "0", "--out", str(out)]) == 2
    for bad in ("3-1", "x", "1,,2", "-2"):
        assert main(["tasks", "builtin", "--worlds", bad, "--out", str(out)]) == 2
    assert not out.exists()


def test_cli_builtin_several_worlds_in_one_file(tmp_path):
    out = tmp_path / "more.jsonl"
    assert main(["tasks", "builtin", "--worlds", "2-3,0,2", "--domain", "retail", "--per-skill", "1", "--out", str(out)]) == 0
    tasks = records.read_all(out, "task")
    made = [t for s in (2, 3, 0) for t in seed_tasks("retail", seed=s, per_skill=1)]  # 2 once, in order
    assert [t["id"] for t in tasks] == [t["id"] for t in made] and len({t["id"] for t in tasks}) == 12
    assert [t["user_turns"] for t in tasks] == [t["user_turns"] for t in made]
