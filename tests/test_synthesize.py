"""rods synthesize on the real built-in environments: variants replay, keep the seed's
profile, are new (no near-duplicates), carry their lineage and skill augmentation, are
deterministic in the seed; and the CLI in groups mode, seeds mode and with --per-seed 0."""

from __future__ import annotations

import functools
from itertools import combinations

import orjson
import pytest
from typer.testing import CliRunner

from rodscli import records, schemas
from rodscli.cli import app, main
from rodscli.envs.base import replay_reference
from rodscli.envs.builtin import seed_tasks
from rodscli.profile import compute_profile, profile_distance
from rodscli.synth import DuplicateIndex, SynthesizeOptions, call_keys, synthesize
from rodscli.synth.write import critique, value_text


@functools.cache
def _seeds(per_skill: int) -> tuple[dict, ...]:
    return tuple(seed_tasks(per_skill=per_skill))


def seeds(per_skill: int = 2) -> list[dict]:
    return [orjson.loads(orjson.dumps(t)) for t in _seeds(per_skill)]


@functools.cache
def _run(per_skill: int, per_seed: int, seed: int = 0) -> tuple[list[dict], dict]:
    tasks = seeds(per_skill)
    return synthesize(tasks, tasks, SynthesizeOptions(per_seed=per_seed, seed=seed))


def test_variants_replay_match_profile_and_carry_lineage():
    cands, stats = _run(2, 2)
    tasks = {t["id"]: t for t in seeds(2)}
    assert stats["requested"] == 32 and stats["accepted"] == len(cands) >= 29
    assert stats["attempted"] == stats["accepted"] + sum(stats["rejected"].values())
    # failed executions by cause ("tool: reason"), at most every one of them
    assert sum(stats["execution_failures"].values()) <= stats["rejected"]["execution_failed"]
    assert all(": " in cause for cause in stats["execution_failures"])
    for c in cands:
        assert schemas.problems("task", c) == [], c["id"]
        parent = tasks[c["parent_id"]]
        assert (c["origin"], c["generation"], c["created_iter"]) == ("synthetic", 1, 0)
        assert c["skill"] == parent["skill"] and len(c["user_turns"]) == len(c["reference"]) == len(parent["reference"])
        trace = replay_reference(c)
        assert trace.ok, c["id"]
        assert c["profile"] == compute_profile(c)  # the stored Phi is the one a fresh replay gives
        d = profile_distance(c["profile"], parent["profile"])
        assert d <= 0.15 and c["synthesis"]["profile_distance"] == round(d, 4)
        assert c["synthesis"]["seed_id"] == parent["id"]
        # new entities: the variant's calls are not the seed's
        assert call_keys(c) != call_keys(parent)


def test_no_near_duplicates_among_candidates_and_seeds():
    cands, _ = _run(2, 2)
    n_seeds = len(_seeds(2))
    pool = [call_keys(t) for t in _seeds(2)] + [call_keys(c) for c in cands]
    for a, b in combinations(range(len(pool)), 2):
        if b >= n_seeds:  # seeds among themselves may repeat; every candidate is new
            assert len(pool[a] & pool[b]) / len(pool[a] | pool[b]) < 0.7


def test_duplicate_index_jaccard_on_hand_numbers():
    idx = DuplicateIndex()
    idx.add(frozenset({"a", "b", "c"}))
    idx.add(frozenset({"x"}))
    assert idx.max_jaccard(frozenset({"a", "b"})) == pytest.approx(2 / 3)
    assert idx.max_jaccard(frozenset({"a", "b", "c", "d"})) == pytest.approx(3 / 4)
    assert idx.max_jaccard(frozenset({"z"})) == 0.0


def test_skill_augmentation_follows_the_seed():
    cands, _ = _run(2, 2)
    tasks = {t["id"]: t for t in seeds(2)}
    by_skill = {s: [c for c in cands if c["skill"] == s] for s in ("miss_func", "miss_param", "long_context")}
    assert all(by_skill.values())
    for c in by_skill["miss_func"]:
        assert c["withheld"] == tasks[c["parent_id"]]["withheld"] != []
        k = c["withheld"][0]["turn"]
        assert c["reference"][k - 1] == [] and c["reference"][k]
    for c in by_skill["miss_param"]:
        k = next(i for i, turn in enumerate(c["reference"]) if not turn)
        assert c["user_turns"][k + 1].startswith("Sorry, the ")
        value = c["user_turns"][k + 1].split(" is ", 1)[1].rstrip(".")
        assert value not in c["user_turns"][k]  # the request leaves the value out ...
        args = [orjson.dumps(v).decode().strip('"') for call in c["reference"][k + 1] for v in call["arguments"].values()]
        assert value.strip("'") in args  # ... and the next turn supplies it
    for c in by_skill["long_context"]:
        assert len(c["initial_state"]["customers" if c["domain"] == "retail" else "files"]) >= 100


def test_deterministic_in_the_seed():
    tasks = seeds(1)
    a, sa = synthesize(tasks, tasks, SynthesizeOptions(per_seed=2, seed=3))
    b, sb = synthesize(seeds(1), seeds(1), SynthesizeOptions(per_seed=2, seed=3))
    c, _ = synthesize(seeds(1), seeds(1), SynthesizeOptions(per_seed=2, seed=4))
    assert a == b and sa == sb
    assert [x["reference"] for x in a] != [x["reference"] for x in c]


def test_variants_of_variants_keep_lineage():
    cands, _ = _run(1, 1)
    grand, _ = synthesize(cands, seeds(1) + cands, SynthesizeOptions(per_seed=1, iteration=1))
    assert grand and all(g["generation"] == 2 and g["created_iter"] == 1 for g in grand)
    parents = {c["id"]: c for c in cands}
    assert all(parents[g["parent_id"]]["parent_id"] in {t["id"] for t in seeds(1)} for g in grand)


def test_acceptance_100_seeds_x_4_variants():
    """The issue's acceptance bar on the built-in domains: >= 90% of 400 requested variants."""
    tasks = seeds(13)[:100]
    cands, stats = synthesize(tasks, tasks, SynthesizeOptions(per_seed=4))
    assert len(tasks) == 100
    assert stats["accepted"] >= 360, stats
    by_id = {t["id"]: t for t in tasks}
    assert all(replay_reference(c).ok for c in cands)
    assert all(profile_distance(c["profile"], by_id[c["parent_id"]]["profile"]) <= 0.15 for c in cands)
    keys = [call_keys(c) for c in cands]
    idx = DuplicateIndex()
    for k in keys:
        assert idx.max_jaccard(k) < 0.7
        idx.add(k)


# ------------------------------------------------------------------------------- CLI


def _write(path, recs, schema):
    records.write_records(str(path), recs, schema, provenance_info={})


def _group(tid, skill, rank):
    return {"task_id": tid, "skill": skill, "n": 4, "mean": 0.5, "var": 0.25, "min": 0.0, "max": 1.0, "phi": 1.0,
            "zone": "boundary", "informative": True, "selected": rank is not None, "rank": rank}


def test_cli_groups_mode_and_empty(tmp_path):
    tasks = seeds(1)
    _write(tmp_path / "tasks.jsonl", tasks, "task")
    groups = [_group(tasks[0]["id"], tasks[0]["skill"], 1), _group(tasks[3]["id"], tasks[3]["skill"], 0),
              _group(tasks[5]["id"], tasks[5]["skill"], None)]
    _write(tmp_path / "groups.jsonl", groups, "group")
    runner = CliRunner()
    r = runner.invoke(app, ["--seed", "2", "synthesize", "--groups", str(tmp_path / "groups.jsonl"), "--tasks",
                            str(tmp_path / "tasks.jsonl"), "--iteration", "3", "--per-seed", "2",
                            "--out", str(tmp_path / "cand.parquet")])
    assert r.exit_code == 0, r.output
    cands = records.read_all(str(tmp_path / "cand.parquet"), "task")
    assert {c["parent_id"] for c in cands} == {tasks[0]["id"], tasks[3]["id"]}
    assert cands[0]["parent_id"] == tasks[3]["id"]  # rank 0 first
    assert all(c["created_iter"] == 3 for c in cands)
    prov = records.read_provenance(str(tmp_path / "cand.parquet"))
    assert prov["synthesis"]["accepted"] == len(cands) and "near_duplicate" in prov["synthesis"]["rejected"]
    r = runner.invoke(app, ["synthesize", "--groups", str(tmp_path / "groups.jsonl"), "--tasks", str(tmp_path / "tasks.jsonl"),
                            "--per-seed", "0", "--out", str(tmp_path / "empty.parquet")])
    assert r.exit_code == 0, r.output
    assert records.read_all(str(tmp_path / "empty.parquet"), "task") == []


def test_cli_unknown_selected_task_is_a_user_error(tmp_path, capsys):
    _write(tmp_path / "tasks.jsonl", seeds(1)[:2], "task")
    _write(tmp_path / "groups.jsonl", [_group("nope", "base", 0)], "group")
    code = main(["synthesize", "--groups", str(tmp_path / "groups.jsonl"), "--tasks", str(tmp_path / "tasks.jsonl"),
                 "--out", str(tmp_path / "c.jsonl")])
    err = capsys.readouterr().err
    assert code == 2
    assert "groups.jsonl" in err and "task_id" in err and "nope" in err
    assert not (tmp_path / "c.jsonl").exists()


# ------------------------------------------------------------------------------- BFCL


@functools.cache
def _bfcl_train() -> tuple[dict, ...]:
    from rodscli.envs.bfcl import BFCLTasksOptions, bfcl_tasks

    return tuple(bfcl_tasks(BFCLTasksOptions(split="train")))


def test_bfcl_variants_replay_and_match_profile():
    train = [orjson.loads(orjson.dumps(t)) for t in _bfcl_train()]
    picked = train[::40]  # 10 seeds across the four categories
    cands, stats = synthesize(picked, train, SynthesizeOptions(per_seed=2))
    by_id = {t["id"]: t for t in train}
    assert stats["accepted"] >= 14, stats  # of 20 requested
    for c in cands:
        assert schemas.problems("task", c) == [], c["id"]
        assert replay_reference(c).ok
        assert profile_distance(c["profile"], by_id[c["parent_id"]]["profile"]) <= 0.15
        assert c["env_config"] == by_id[c["parent_id"]]["env_config"]
    pool = [call_keys(t) for t in train]
    idx = DuplicateIndex()
    for k in pool:
        idx.add(k)
    for c in cands:
        assert idx.max_jaccard(call_keys(c)) < 0.7
        idx.add(call_keys(c))


@pytest.mark.slow
def test_bfcl_acceptance_100_seeds_x_4_variants():
    """The issue's acceptance bar on BFCL: 100 training seeds x 4 variants, >= 90% accepted."""
    train = [orjson.loads(orjson.dumps(t)) for t in _bfcl_train()]
    picked = train[::4]
    cands, stats = synthesize(picked, train, SynthesizeOptions(per_seed=4))
    assert len(picked) == 100
    assert stats["accepted"] >= 360, stats  # the 90% bar
    assert stats["execution_failures"], stats  # the causes are reported (a route the simulator does not know, ...)
    by_id = {t["id"]: t for t in train}
    idx = DuplicateIndex()
    for c in cands:
        assert replay_reference(c).ok
        assert profile_distance(c["profile"], by_id[c["parent_id"]]["profile"]) <= 0.15
        assert idx.max_jaccard(call_keys(c)) < 0.7
        idx.add(call_keys(c))


# ------------------------------------------------------------------------------- the llm writer


def test_critique_keeps_values_and_withholds_the_rest():
    t = "Please find a customer by full name with name 'Ada Moreno', then get a customer's full record."
    values = {"'Ada Moreno'", "'C-0001'"}
    assert critique("Could you look up the customer named 'Ada Moreno' and get their full record?", t, values)
    assert not critique("Look up the customer record, please.", t, values)  # dropped a value
    assert not critique("Find customer 'Ada Moreno' with id 'C-0001' and get the full record.", t, values)  # gave one away
    assert not critique("ulpon97ures taken freeberg14902 alsoremove0116 customer 'Ada Moreno' vera0160 full record", t, values)
    assert not critique("", t, values)


@pytest.mark.slow
def test_llm_writer_with_the_tiny_policy(tmp_path):
    """A real (tiny, untrained) policy rewrites; every turn is its rewrite that passed the
    critic or else the template's turn, and the tasks are the template writer's otherwise."""
    from rodscli.policy.tiny import init_policy

    init_policy(tmp_path / "tiny")
    tasks = seeds(1)[:2]
    plain, _ = synthesize(tasks, tasks, SynthesizeOptions(per_seed=1))
    llm, stats = synthesize(seeds(1)[:2], seeds(1)[:2],
                            SynthesizeOptions(per_seed=1, writer="llm", policy=str(tmp_path / "tiny")))
    assert [c["reference"] for c in llm] == [c["reference"] for c in plain]
    assert stats["turns"] == sum(len(c["user_turns"]) for c in llm)
    for a, b in zip(plain, llm, strict=True):
        flags = b["synthesis"]["rewritten"]
        assert len(flags) == len(b["user_turns"])
        values = {value_text(v) for turn in b["reference"] for c in turn for v in c["arguments"].values()}
        for ok, before, after in zip(flags, a["user_turns"], b["user_turns"], strict=True):
            assert after == before if not ok else critique(after, before, values)
    assert stats["rewritten_turns"] == sum(sum(c["synthesis"]["rewritten"]) for c in llm)


def test_remembered_call_outcomes_replace_runs_exactly():
    """execute() remembers each call's outcome and the state it left, by the call and its
    class's state: executing again with the same choices runs no call and gives the same
    calls, results, state changes and final state (the simulators are deterministic)."""
    import random

    from rodscli.synth.execute import execute
    from rodscli.synth.graph import ApiGraph
    from rodscli.synth.plan import make_plan

    train = [orjson.loads(orjson.dumps(t)) for t in _bfcl_train()]
    graph = ApiGraph.mine(train)
    checked = 0
    for seed in train[::40]:
        plan = make_plan(seed)
        task = {k: seed[k] for k in ("env", "domain", "skill", "env_config", "tools", "withheld", "initial_state")}
        outcomes: dict = {}
        runs = []
        for _ in range(2):
            try:
                runs.append(execute(plan, task, graph, random.Random(7), 4, swap=0.3, outcomes=outcomes))
            except Exception as exc:  # a failing plan fails the same way again
                runs.append(type(exc).__name__ + str(exc))
            if len(runs) == 1:
                remembered = len(outcomes)
                assert remembered > 0
        assert len(outcomes) == remembered  # the second execution ran no call
        first, second = runs
        if isinstance(first, str):
            assert first == second
            continue
        assert (first.reference, first.results, first.mutated, first.repairs) == \
            (second.reference, second.results, second.mutated, second.repairs)
        assert first.final.hash() == second.final.hash()
        stored = {id(out.result) for out, _, _ in outcomes.values()}
        assert all(id(r) in stored for r in second.results)  # the remembered results themselves
        checked += 1
    assert checked >= 5
