"""Synthesis knows no environment family: any family implementing the environment
protocol gets verified variants. Proven on the Python-class family (a toy library in
tests/toy_envs.py) and the MCP family (a real SQLite server), neither of which the
synthesizer names."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from test_mcp_env import SQLITE_SERVER, sqlite_task
from test_synth_steps import MEMBERS, library_task

from rodscli import schemas
from rodscli.envs.base import open_episode, replay_reference, state_hash
from rodscli.envs.builtin import seed_tasks
from rodscli.profile import compute_profile, profile_distance
from rodscli.synth import DuplicateIndex, SynthesizeOptions, call_keys, synthesize
from rodscli.synth.worlds import WorldPool

SYNTH = Path(__file__).resolve().parents[1] / "src" / "rodscli" / "synth"


def test_the_synthesizer_imports_no_family():
    for path in SYNTH.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"rodscli\.envs\.(builtin|bfcl|pyclass|mcp)|(Builtin|BFCL|Class|MCP)Episode"
                             r"|[\"'](builtin|bfcl|pyclass|mcp)[\"']|\.instances\b", text), path


def _check(cands: list[dict], seeds: list[dict], known: list[dict]) -> None:
    """Every candidate is a valid task that replays, keeps its seed's Phi and is new."""
    by_id = {t["id"]: t for t in seeds}
    index = DuplicateIndex()
    for t in known:
        index.add(call_keys(t))
    for c in cands:
        assert schemas.problems("task", c) == [], c["id"]
        assert replay_reference(c).ok
        assert c["profile"] == compute_profile(c)
        assert profile_distance(c["profile"], compute_profile(by_id[c["parent_id"]])) <= 0.15
        assert index.max_jaccard(call_keys(c)) < 0.7
        index.add(call_keys(c))


def test_pyclass_variants_are_verified():
    seed = library_task()
    cands, stats = synthesize([seed], [seed], SynthesizeOptions(per_seed=3))
    assert stats["accepted"] == len(cands) == 3, stats
    _check(cands, [seed], [seed])
    for c in cands:
        title = c["reference"][0][0]["arguments"]["title"]
        assert title != "Dune"  # another book of the same world ...
        book_id, member = c["reference"][0][1]["arguments"].values()
        assert c["initial_state"]["Library"]["books"][book_id]["title"] == title  # ... whose id flowed on
        assert member in MEMBERS[1:] and c["reference"][1][0]["arguments"] == {"member": member}
        assert c["synthesis"]["world"] in ("pool", "seed")


def test_pyclass_episode_saves_and_restores_owner_state():
    with open_episode(library_task()) as ep:
        assert ep.state_owners() == ["Library"] and ep.tool_owner("lend") == "Library" and ep.tool_owner("nope") == ""
        before = ep.save_state("Library")
        ep.call("lend", {"book_id": "B-001", "member": "Bob Ray"})
        assert ep.state_view("Library")["books"]["B-001"]["lent_to"] == "Bob Ray"
        assert ep.save_state("Library") != before
        ep.restore_state("Library", before)
        assert ep.save_state("Library") == before
        assert ep.state_view("Library")["books"]["B-001"]["lent_to"] is None


def _fruit_task(i: int, first: str, second: str) -> dict:
    task = sqlite_task()
    task["id"] = f"mcp-fruit-{i}"
    insert = "INSERT INTO items (name) VALUES ('{}')"
    task["reference"] = [[{"name": "write_query", "arguments": {"query": insert.format(first)}}],
                         [{"name": "write_query", "arguments": {"query": insert.format(second)}},
                          {"name": "read_query", "arguments": {"query": f"SELECT id FROM items WHERE name = '{second}'"}}]]
    return task


@pytest.mark.slow
@pytest.mark.skipif(not SQLITE_SERVER.exists(), reason=f"the MCP test server is not installed ({SQLITE_SERVER}): run `make install`")
def test_mcp_variants_are_verified():
    """An MCP server's state is one whole (no owners): the arguments are literals from the
    API graph (other known tasks' queries), each variant runs on its own server and replays
    on another. Every episode starts a server process: a few seconds each."""
    known = [_fruit_task(i, a, b) for i, (a, b) in enumerate([("apple", "pear"), ("fig", "kiwi"), ("lime", "plum")])]
    cands, stats = synthesize(known[:1], known, SynthesizeOptions(per_seed=1))
    assert stats["accepted"] == len(cands) == 1, stats
    _check(cands, known, known)
    assert cands[0]["synthesis"]["sources"] == {"literal": 3}


def test_worlds_come_from_the_family():
    seed = library_task()
    other = library_task(id="toy-library-1", initial_state={"Library": {"books": {}, "members": ["Di Fox"]}})
    unlike = library_task(id="toy-library-2", env_config={"classes": ["toy_envs:Library"], "loader": "load"})
    pool = WorldPool([seed, other, dict(other, id="toy-library-3"), unlike])
    assert len(pool.like(seed)) == 2  # equal states once; another env_config is another kind of world
    assert {state_hash(w) for w in pool.like(seed)} == {state_hash(seed["initial_state"]), state_hash(other["initial_state"])}
    # the default (pyclass): a known world on even attempts, the seed's own on odd ones
    world, origin = pool.new_world(seed, random.Random(1), attempt=0)
    assert origin == "pool" and world is random.Random(1).choice(pool.like(seed))
    assert pool.new_world(seed, random.Random(1), attempt=1) == (seed["initial_state"], "seed")
    assert WorldPool([]).new_world(seed, random.Random(1), attempt=0) == (seed["initial_state"], "seed")
    # builtin makes its worlds: deterministic in the rng and the run's seed, large for long_context
    builtin = seed_tasks(domain="retail", per_skill=1)
    base = next(t for t in builtin if t["skill"] == "base")
    long = next(t for t in builtin if t["skill"] == "long_context")
    world, origin = pool.new_world(base, random.Random(2), attempt=0, salt=5)
    assert origin == f"generated:{random.Random(2).randrange(64)}"
    assert pool.new_world(base, random.Random(2), attempt=1, salt=5)[0] is world  # made once per process
    assert pool.new_world(base, random.Random(2), attempt=0, salt=6)[0] != world
    assert len(pool.new_world(long, random.Random(2), attempt=0)[0]["customers"]) > len(world["customers"])
