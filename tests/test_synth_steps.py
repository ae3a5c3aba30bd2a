"""The synthesizer's steps one by one, on hand-made inputs with expected outputs: JSON
paths, binding a three-call seed into a plan, grounding a step in a new world, and the
template writer's user turns (the end-to-end behaviour is in test_synthesize.py)."""

from __future__ import annotations

import random

import pytest

from rodscli.envs.base import open_episode
from rodscli.profile import CallTrace
from rodscli.synth.execute import Execution
from rodscli.synth.graph import ApiGraph
from rodscli.synth.ground import Grounder
from rodscli.synth.paths import FirstPaths, expand, follow, index_paths, is_collection
from rodscli.synth.plan import Source, Step, bind, link, make_plan
from rodscli.synth.states import FinalState, live_state
from rodscli.synth.write import value_text, write_turns

TITLES = [("Dune", "Herbert"), ("Emma", "Austen"), ("Ulysses", "Joyce"), ("Beloved", "Morrison")]
MEMBERS = ["Ann Lee", "Bob Ray", "Cy Park"]


def library_task(**changes) -> dict:
    """Three calls over two turns: find a book by title (its id flows into the loan), lend
    it to a member, list the member's loans (the member flows from the loan's result)."""
    books = {f"B-{i:03d}": {"title": t, "author": a, "lent_to": None} for i, (t, a) in enumerate(TITLES)}
    task = {
        "id": "toy-library-0", "env": "pyclass", "domain": "library", "skill": "base",
        "origin": "seed", "parent_id": None, "generation": 0,
        "user_turns": ["Lend Dune to Ann.", "What does Ann have now?"],
        "initial_state": {"Library": {"books": books, "members": list(MEMBERS)}},
        "env_config": {"classes": ["toy_envs:Library"], "loader": None},
        "tools": [], "withheld": [],
        "reference": [[{"name": "find_book", "arguments": {"title": "Dune"}},
                       {"name": "lend", "arguments": {"book_id": "B-000", "member": "Ann Lee"}}],
                      [{"name": "loans", "arguments": {"member": "Ann Lee"}}]],
    }
    task.update(changes)
    return task


# ------------------------------------------------------------------------------- paths


def test_collections_are_keyed_by_entities_records_by_fields():
    assert is_collection({"C-1": {"name": "a"}, "C-2": {"name": "b"}})  # records by id
    assert is_collection({"Ada Moreno": "U-1", "Bo Li": "U-2"})  # a name -> id map
    assert is_collection({"SAVE10": 10, "SAVE20": 20})  # codes -> percent
    assert not is_collection({"name": "Ada", "city": "Oslo"})  # a record: every key a field name
    assert not is_collection({"name": "Ada", "age": 3})  # mixed value types
    assert not is_collection({}) and not is_collection(["a"])


def test_paths_masks_and_pattern_matches():
    # (a record whose values are all records would read as a collection: the shop has a scalar)
    state = {"Shop": {"open": True, "customers": {"C-1": {"name": "Ada", "orders": ["O-1"]},
                                                  "C-2": {"name": "Bo", "orders": []}}}}
    hits = index_paths(state, {"Ada", "C-2", "O-1"})
    assert hits["Ada"] == [(("Shop", "customers", "C-1", "name"), (False, False, True, False), False)]
    assert hits["C-2"] == [(("Shop", "customers", "C-2"), (False, False, True), True)]  # a key
    assert hits["O-1"] == [(("Shop", "customers", "C-1", "orders", 0), (False, False, True, False, True), False)]
    path, mask, _ = hits["Ada"][0]
    assert expand(state, path, mask, False) == [(("Shop", "customers", "C-1", "name"), "Ada"),
                                                (("Shop", "customers", "C-2", "name"), "Bo")]
    assert follow(state, ("Shop", "customers", "C-2", "name")) == "Bo"
    with pytest.raises(KeyError):
        follow(state, ("Shop", "nobody"))


def test_first_paths_find_a_value_as_itself_or_as_its_text():
    found = FirstPaths([{"orders": [{"id": "O-7", "total": 6500.0}]}])
    assert found.first(0, "O-7") == (("orders", 0, "id"), (False, True, False), False)
    assert found.first(0, "6500") is None  # another type: not the same value ...
    assert found.first(0, "6500", loose=True) == (("orders", 0, "total"), (False, True, False), False)  # ... same text


# ------------------------------------------------------------------------------- binding and the plan


def test_bind_chooses_keep_flow_state_or_literal():
    found = FirstPaths([{"ticket_id": 2, "count": 3, "items": [{"sku": "SKU-1"}, {"sku": "SKU-2"}]}])
    in_state = {"Oslo": [(("Travel", "home"), (False, False), False),
                         (("Travel", "trips", 0, "city"), (False, False, True, False), False)]}
    assert bind("status", "shipped", {"status"}, found, {}).kind == "keep"  # an enum keeps its value
    assert bind("express", True, set(), found, {}).kind == "keep"
    ticket = bind("ticket", 2, set(), found, {})  # a small number flows only from an id field
    assert (ticket.kind, ticket.call, ticket.path) == ("flow", 0, ("ticket_id",))
    assert bind("n", 3, set(), found, {}).kind == "literal"  # ... not by accident
    skus = bind("skus", ["SKU-2", "SKU-9"], set(), found, {})
    assert skus.kind == "list" and [p.kind for p in skus.parts] == ["flow", "keep"]
    assert skus.parts[0].path == ("items", 1, "sku")
    city = bind("city", "Oslo", set(), found, in_state)  # an attribute of the world itself first
    assert (city.kind, city.path, city.hits) == ("state", ("Travel", "home"), in_state["Oslo"])
    assert bind("note", "hello there", set(), found, in_state).kind == "literal"


def test_link_binds_a_file_and_its_folder_jointly():
    # the folder name is in the folder list and in each file; the file's name only once
    folder = Source("state", path=("Fs", "dirs", 0), mask=(False, False, True), hits=[
        (("Fs", "dirs", 0), (False, False, True), False),
        (("Fs", "files", 1, "dir"), (False, False, True, False), False),
        (("Fs", "files", 2, "dir"), (False, False, True, False), False)])
    name = Source("state", path=("Fs", "files", 2, "name"), mask=(False, False, True, False),
                  hits=[(("Fs", "files", 2, "name"), (False, False, True, False), False)])
    link({"folder": folder, "name": name})
    assert name.link is None  # the anchor: fewest places
    assert folder.link == ("name", 3) and folder.path == ("Fs", "files", 2, "dir")  # the same file's folder


def test_plan_of_a_three_call_seed():
    plan = make_plan(library_task())
    assert [(s.turn, s.index, s.name) for s in plan.steps] == [(0, 0, "find_book"), (0, 1, "lend"), (1, 2, "loans")]
    title = plan.steps[0].sources["title"]
    assert (title.kind, title.path, title.mask) == ("state", ("Library", "books", "B-000", "title"), (False, False, True, False))
    book_id, member = plan.steps[1].sources["book_id"], plan.steps[1].sources["member"]
    assert (book_id.kind, book_id.call, book_id.path) == ("flow", 0, ("book_id",))
    assert (member.kind, member.path, member.mask) == ("state", ("Library", "members", 0), (False, False, True))
    loans = plan.steps[2].sources["member"]
    assert (loans.kind, loans.call, loans.path) == ("flow", 1, ("lent_to",))  # from the loan's result
    assert plan.mutated == [False, True, False]  # only the loan changes the library
    assert plan.n_turns == 2 and plan.occurrence == [0, 0, 0]
    assert plan.profile["edges"] == [[0, 1, "flow"], [1, 2, "flow"]]


# ------------------------------------------------------------------------------- grounding


def test_ground_picks_another_entity_of_the_new_world_and_remembers_it():
    plan = make_plan(library_task())
    ep = open_episode(library_task())
    try:
        g = Grounder(plan, ApiGraph(), random.Random(5))
        args = g.ground(plan.steps[0], lambda: live_state(ep), fresh=False)
        # every title but the seed's, in state order, one drawn by the same rng
        assert args == {"title": random.Random(5).choice(["Emma", "Ulysses", "Beloved"])}
        assert g.memo[(str, "Dune")] == args["title"]
        # the seed's value again (not fresh): the same choice, no draw
        assert g.ground(plan.steps[0], lambda: pytest.fail("state read"), fresh=False) == args
        g.parsed.append({"book_id": "B-002", "author": "Joyce"})
        lend = g.ground(plan.steps[1], lambda: live_state(ep), fresh=False)
        assert lend["book_id"] == "B-002"  # flows from the new result
        assert lend["member"] in ("Bob Ray", "Cy Park")  # another member than the seed's
    finally:
        ep.close()


def test_ground_draws_literals_from_one_observed_call():
    known = [library_task(reference=[[{"name": "loans", "arguments": {"member": m}}]]) for m in ("Zed Oak", "Yu Pine")]
    graph = ApiGraph.mine(known)
    step = Step(0, "loans", {"member": "Ann Lee"}, {"member": Source("literal")})
    plan = make_plan(library_task())
    g = Grounder(plan, graph, random.Random(0))
    drawn = g.ground(step, lambda: pytest.fail("state read"), fresh=False)["member"]
    assert drawn in ("Zed Oak", "Yu Pine")
    assert Grounder(plan, graph, random.Random(0), keep_literals=True).ground(step, dict, fresh=False) == {"member": "Ann Lee"}


# ------------------------------------------------------------------------------- the template writer


def _execution(plan, reference: list[list[dict]], parsed: list) -> Execution:
    steps = [Step(s.turn, c["name"], c["arguments"], s.sources, s.index)
             for s, c in zip(plan.steps, [c for turn in reference for c in turn], strict=True)]
    with open_episode(plan.seed) as ep:
        tools = dict(ep.tool_index())
    n = len(steps)
    return Execution(reference, [""] * n, FinalState(None, str), 0, {}, tools, parsed, steps, [False] * n, [""] * n)


def test_template_turns_of_a_three_call_plan():
    plan = make_plan(library_task())
    reference = [[{"name": "find_book", "arguments": {"title": "Emma"}},
                  {"name": "lend", "arguments": {"book_id": "B-001", "member": "Cy Park"}}],
                 [{"name": "loans", "arguments": {"member": "Cy Park"}}]]
    run = _execution(plan, reference, [{"book_id": "B-001"}, {"book_id": "B-001", "lent_to": "Cy Park"}, ["B-001"]])
    turns = write_turns(plan, run, random.Random(0))
    # the book id is left for the agent to look up; the member, said once, is named again.
    # Random(0) draws joiner 1 and opener 3 for the first turn, joiner 0 and opener 2 for the second
    assert turns == ["Find a book by its title with title 'Emma'; after that, lend a book to a member with member 'Cy Park', please.",
                     "I need you to the ids of the books a member has with member 'Cy Park'."]


def test_miss_param_leaves_a_value_out_and_the_next_turn_gives_it():
    seed = library_task(skill="miss_param", user_turns=["Lend a book to Ann.", "Dune.", "What does Ann have?"],
                        reference=[[], [{"name": "find_book", "arguments": {"title": "Dune"}},
                                        {"name": "lend", "arguments": {"book_id": "B-000", "member": "Ann Lee"}}],
                                   [{"name": "loans", "arguments": {"member": "Ann Lee"}}]])
    plan = make_plan(seed)
    reference = [[], [{"name": "find_book", "arguments": {"title": "Emma"}},
                      {"name": "lend", "arguments": {"book_id": "B-001", "member": "Cy Park"}}],
                 [{"name": "loans", "arguments": {"member": "Cy Park"}}]]
    run = _execution(plan, reference, [{"book_id": "B-001"}, {"book_id": "B-001", "lent_to": "Cy Park"}, ["B-001"]])
    turns = write_turns(plan, run, random.Random(0))
    assert len(turns) == 3
    said = turns[1].removeprefix("Sorry, the ").removesuffix(".")
    arg, value = said.split(" is ", 1)
    assert value in (value_text("Emma"), value_text("Cy Park"))  # a required, user-given value ...
    assert value not in turns[0] and arg in ("title", "member")  # ... left out of the request
    assert "'Cy Park'" in turns[2]


def test_execution_trace_is_known_only_when_every_change_is():
    plan = make_plan(library_task())
    run = _execution(plan, plan.seed["reference"], [None, None, None])
    trace = run.call_trace()
    assert isinstance(trace, CallTrace) and trace.mutated == [[False, False], [False]]
    run.mutated[1] = None
    assert run.call_trace() is None
