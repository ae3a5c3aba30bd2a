"""The complexity profile Phi: edges, depth, signature and distance on hand-made tasks."""

from __future__ import annotations

import pytest

from rodscli.profile import compute_profile, profile_distance, topology_signature, trace_calls


class Shop:
    """A tiny stateful shop used as a Python-class environment."""

    def __init__(self):
        self.orders = {}
        self.items = ["apple", "banana"]
        self._next = 1001

    def list_items(self) -> list:
        """List the items on sale."""
        return list(self.items)

    def create_order(self, item: str) -> dict:
        """Create an order.

        Args:
            item: the item name.
        """
        oid = f"ORD-{self._next}"
        self._next += 1
        self.orders[oid] = {"item": item, "status": "open"}
        return {"order_id": oid}

    def get_order(self, order_id: str) -> dict:
        """Look up an order.

        Args:
            order_id: the order id.
        """
        return self.orders[order_id]

    def cancel_order(self, order_id: str) -> str:
        """Cancel an order.

        Args:
            order_id: the order id.
        """
        self.orders[order_id]["status"] = "cancelled"
        return "ok"


def task(reference, skill="base", withheld=()):
    return {
        "id": "t", "env": "pyclass", "domain": "shop", "skill": skill, "origin": "seed",
        "parent_id": None, "generation": 0, "user_turns": ["u"] * len(reference),
        "initial_state": {}, "env_config": {"classes": [f"{__name__}:Shop"]},
        "tools": [], "withheld": list(withheld), "reference": reference,
    }


def c(name, **args):
    return {"name": name, "arguments": args}


def test_flow_and_state_edges_by_hand():
    # list_items -> create_order(apple) (flow: "apple" is in the listing)
    # create_order -> get_order(ORD-1001) (flow), create_order -> cancel (flow of the id)
    # cancel mutated the order that get_order (turn 2) reads: state edge 2->3
    t = task([
        [c("list_items"), c("create_order", item="apple")],
        [c("cancel_order", order_id="ORD-1001")],
        [c("get_order", order_id="ORD-1001")],
    ])
    p = compute_profile(t)
    assert p["ref_errors"] == 0
    assert p["edges"] == [[0, 1, "flow"], [1, 2, "flow"], [1, 3, "flow"], [2, 3, "state"]]
    assert p["n_flow_edges"] == 3 and p["n_state_edges"] == 1
    assert p["depth"] == 4  # list -> create -> cancel -> get
    assert p["cross_turn_refs"] == 3
    assert p["calls_per_turn"] == [2, 1, 1] and p["n_turns"] == 3 and p["n_calls"] == 4
    assert p["tools"] == ["list_items", "create_order", "cancel_order", "get_order"]


def test_parameter_names_are_not_parameter_flow():
    # get_order's result has the key "item", create_order's parameter name: no flow edge 1->2
    t = task([[c("create_order", item="apple"), c("get_order", order_id="ORD-1001"), c("create_order", item="banana")]])
    assert compute_profile(t)["edges"] == [[0, 1, "flow"], [0, 2, "state"]]


def test_mutation_is_traced_per_call():
    t = task([[c("list_items"), c("create_order", item="banana"), c("get_order", order_id="ORD-1001")]])
    tr = trace_calls(t)
    assert tr.mutated == [[False, True, False]]
    assert tr.owners == [["Shop", "Shop", "Shop"]]
    # a trace passed in is used as is (no second execution changes the answer)
    assert compute_profile(t, tr) == compute_profile(t)


def test_signature_ignores_names_and_order_of_isomorphic_nodes():
    a = topology_signature(3, [(0, 1, "flow"), (0, 2, "state")])
    b = topology_signature(3, [(0, 2, "flow"), (0, 1, "state")])
    chain = topology_signature(3, [(0, 1, "flow"), (1, 2, "state")])
    assert a[0] == b[0]
    assert a[0] != chain[0]
    # a flow edge is not a state edge
    assert topology_signature(2, [(0, 1, "flow")])[0] != topology_signature(2, [(0, 1, "state")])[0]


def test_same_shape_other_entities_is_distance_zero():
    p = compute_profile(task([[c("create_order", item="apple")], [c("cancel_order", order_id="ORD-1001")]]))
    q = compute_profile(task([[c("create_order", item="banana")], [c("get_order", order_id="ORD-1001")]]))
    assert p["topology"] == q["topology"]
    assert profile_distance(p, q) == 0.0
    assert profile_distance(p, p) == 0.0


def test_distance_hand_computed():
    base = {"skill": "base", "n_turns": 2, "calls_per_turn": [1, 1], "depth": 2, "n_flow_edges": 1,
            "n_state_edges": 0, "cross_turn_refs": 1, "topology": "x", "topology_labels": ["a", "b"]}
    other = dict(base, skill="miss_param", n_turns=3, calls_per_turn=[1, 1, 0], depth=1, n_flow_edges=0,
                 cross_turn_refs=0, topology="y", topology_labels=["a", "c"])
    # skill 1, turns 1/3, per-turn 0, depth 1/2, flow 1, state 0, cross 1, topology 1 - 1/3
    expected = (1 + 1 / 3 + 0 + 0.5 + 1 + 0 + 1 + 2 / 3) / 8
    assert profile_distance(base, other) == pytest.approx(expected)
    assert profile_distance(other, base) == pytest.approx(expected)


def test_bfcl_profiles_are_deterministic_and_clean():
    bfcl = pytest.importorskip("rodscli.envs.bfcl")
    try:
        tasks = bfcl.load_tasks()
    except Exception as exc:  # the package data is missing on this machine
        pytest.skip(f"BFCL data unavailable: {exc}")
    for t in tasks[::80]:
        p = compute_profile(t)
        assert p["ref_errors"] == 0
        assert p == compute_profile(t)
        assert 1 <= p["depth"] <= p["n_calls"] or p["n_calls"] == 0
