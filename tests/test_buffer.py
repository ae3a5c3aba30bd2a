"""merge-buffer rules on hand-made buffers: injection cap, retirement reasons, seed protection,
capacity with its phi tie-break, batch sampling, determinism, lineage, and the CLI."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from rodscli import records, schemas
from rodscli.cli import app, main
from rodscli.stages.buffer import MergeOptions, init_buffer, lineage_root, merge_buffer, task_of


def task(tid, origin="seed", parent=None, created=None):
    return {
        "id": tid, "env": "builtin", "domain": "retail", "skill": "base", "origin": origin,
        "parent_id": parent, "generation": 0 if parent is None else 1, "created_iter": created,
        "user_turns": ["hi"], "initial_state": {}, "env_config": {}, "tools": ["t"], "withheld": [],
        "reference": [[{"name": "t", "arguments": {}}]],
    }


def group(tid, mean, it, n=4, informative=None):
    phi = 4 * mean * (1 - mean)
    zone = "hard" if mean < 0.2 else ("mastered" if mean > 0.85 else "boundary")
    inf = (0 < mean < 1) if informative is None else informative
    return {"task_id": tid, "skill": "base", "iteration": it, "n": n, "mean": mean, "var": 0.1 if inf else 0.0,
            "min": 0.0, "max": 1.0, "phi": phi, "zone": zone, "informative": inf, "selected": False, "rank": None}


def seeds(k):
    return init_buffer([task(f"s{i}") for i in range(k)])


def valid(buffer):
    for e in buffer:
        assert schemas.problems("buffer", e) == [], schemas.problems("buffer", e)
    return buffer


def by_id(buffer):
    return {e["id"]: e for e in buffer}


def test_init_buffer_is_valid_and_active():
    buf = valid(seeds(3))
    assert [e["status"] for e in buf] == ["active"] * 3
    assert all(e["log"][0]["action"] == "seed" for e in buf)


def test_injection_cap_and_staging():
    buf = seeds(10)  # quota floor(0.2 * 10) = 2
    cands = [task(f"c{i}", "synthetic", "s0", created=0) for i in range(5)]
    out, batch, summary = merge_buffer(buf, [], cands, MergeOptions(iteration=0))
    valid(out)
    status = {e["id"]: e["status"] for e in out}
    assert [status[f"c{i}"] for i in range(5)] == ["active", "active", "pending", "pending", "pending"]
    assert summary["activated"] == 2 and summary["deferred"] == 3
    assert by_id(out)["c0"]["trainable_from"] == 1
    assert {t["id"] for t in batch} == {f"s{i}" for i in range(10)} | {"c0", "c1"}
    # next iteration: 12 active -> quota 2 more
    out2, _, s2 = merge_buffer(out, [], [], MergeOptions(iteration=1))
    assert s2["activated"] == 2 and s2["deferred"] == 1
    # a candidate made later than this iteration is not due yet
    out3, _, s3 = merge_buffer(seeds(10), [], [task("late", "synthetic", "s1", created=5)], MergeOptions(iteration=0))
    assert by_id(out3)["late"]["status"] == "pending" and s3.get("activated", 0) == 0


def test_retirement_reasons_and_seed_protection():
    buf = seeds(10) + init_buffer([task("m", "synthetic", "s0"), task("u", "synthetic", "s0"),
                                   task("st", "synthetic", "s0"), task("young", "synthetic", "s0"),
                                   task("ok", "synthetic", "s0")])
    opts = dict(burn_in=3, stale_iters=3)
    for it in range(3):
        groups = [group("m", 1.0, it), group("s0", 1.0, it), group("u", 0.0, it),
                  group("st", 0.5, it, informative=False), group("ok", 0.5, it)]
        if it == 2:
            groups.append(group("young", 0.0, it))  # unsolvable-looking but still in its burn-in
        buf, _, summary = merge_buffer(buf, groups, [], MergeOptions(iteration=it, **opts))
        valid(buf)
        e = by_id(buf)
        if it == 0:
            assert e["m"]["retire_reason"] == "mastered" and e["m"]["retired_iter"] == 0
            assert e["u"]["status"] == "active"  # burn-in not over
    e = by_id(buf)
    assert e["u"]["retire_reason"] == "unsolvable" and e["u"]["retired_iter"] == 2
    assert e["st"]["retire_reason"] == "stale" and e["st"]["retired_iter"] == 2
    assert e["young"]["status"] == "active" and e["ok"]["status"] == "active"
    # the seed that is "mastered" every time is kept, and the log says why
    assert e["s0"]["status"] == "active"
    assert any(x["action"] == "keep" and "seed task, never retired" in x["reason"] for x in e["s0"]["log"])
    assert any(x["action"] == "retire" and x["reason"].startswith("mastered") for x in e["m"]["log"])
    assert e["m"]["ema_mean"] == 1.0 and e["ok"]["n_rollouts"] == 12


def test_ema_hand_computed():
    buf = init_buffer([task("s0"), task("x", "synthetic", "s0")])
    buf, _, _ = merge_buffer(buf, [group("x", 0.5, 0)], [], MergeOptions(iteration=0))
    buf, _, _ = merge_buffer(buf, [group("x", 0.9, 1)], [], MergeOptions(iteration=1, ema_decay=0.5))
    x = by_id(buf)["x"]
    assert x["ema_mean"] == pytest.approx(0.7)
    assert x["last_phi"] == pytest.approx(4 * 0.9 * 0.1)
    # merging the same groups again does not count them twice (resume after a crash)
    again, _, s = merge_buffer(buf, [group("x", 0.9, 1)], [], MergeOptions(iteration=1))
    assert by_id(again)["x"]["ema_mean"] == pytest.approx(0.7) and s["groups_already_merged"] == 1


def test_capacity_keeps_highest_phi_with_tie_break():
    synth = [task(f"x{i}", "synthetic", "s0") for i in range(5)]
    buf = seeds(1) + init_buffer(synth)
    means = {"x0": 0.5, "x1": 0.1, "x2": 0.5, "x3": 0.3, "x4": 0.9}  # phi 1, .36, 1, .84, .36
    groups = [group(k, m, 0) for k, m in means.items()]
    out, _, summary = merge_buffer(buf, groups, [], MergeOptions(iteration=0, p_max=3, unsolvable=0.0))
    e = by_id(out)
    assert {k for k in means if e[k]["status"] == "active"} == {"x0", "x2", "x3"}
    assert e["x1"]["retire_reason"] == e["x4"]["retire_reason"] == "capacity"
    assert summary["retired_capacity"] == 2
    # a tie at the cut: x1 and x4 both have phi .36; with p_max 4 the id decides (x1 < x4)
    out, _, _ = merge_buffer(buf, groups, [], MergeOptions(iteration=0, p_max=4, unsolvable=0.0))
    e = by_id(out)
    assert e["x1"]["status"] == "active" and e["x4"]["retire_reason"] == "capacity"
    assert e["s0"]["status"] == "active"  # seeds do not count against p_max


def test_batch_priority_floor_and_determinism():
    buf = seeds(40)
    groups = [group(f"s{i}", 0.5 if i < 20 else 1.0, 0) for i in range(40)]
    opts = MergeOptions(iteration=0, batch_size=20, seed=7, floor=0.05)
    a = merge_buffer(buf, groups, [], opts)
    b = merge_buffer(buf, groups, [], opts)
    assert orjson.dumps(a[0]) == orjson.dumps(b[0]) and a[1] == b[1]
    ids = [t["id"] for t in a[1]]
    assert len(ids) == 20
    high = sum(1 for t in ids if int(t[1:]) < 20)
    assert high >= 15  # phi 1 vs floor 0.05: the informative half dominates
    for t in a[1]:
        assert schemas.problems("task", t) == []
    # the floor: over many seeds, every task is sampled at least once
    seen = set()
    for s in range(60):
        seen |= {t["id"] for t in merge_buffer(buf, groups, [], MergeOptions(iteration=0, batch_size=20, seed=s))[1]}
    assert len(seen) == 40


def test_lineage_reaches_a_seed_and_broken_lineage_is_rejected():
    buf = seeds(2)
    c1 = task("c1", "synthetic", "s0", created=0)
    c2 = dict(task("c2", "synthetic", "c1", created=0), generation=2)
    orphan = task("o", "synthetic", "nowhere", created=0)
    out, _, s = merge_buffer(buf, [], [c1, c2, orphan, task("s1", "synthetic", "s0")], MergeOptions(iteration=0))
    e = by_id(out)
    assert lineage_root(e, "c2") == "s0" and "o" not in e
    assert s["rejected_lineage"] == 1 and s["rejected_duplicate_id"] == 1
    assert task_of(e["c2"])["parent_id"] == "c1"


def test_cli_init_and_merge(tmp_path):
    seeds_path = tmp_path / "seeds.jsonl"
    records.write_records(seeds_path, [task(f"s{i}") for i in range(5)], "task")
    runner = CliRunner()
    r = runner.invoke(app, ["merge-buffer", "--init-from", str(seeds_path), "--out", str(tmp_path / "b0.parquet"),
                            "--next-batch", str(tmp_path / "t0.jsonl"), "--iteration", "0"])
    assert r.exit_code == 0, r.output
    assert len(records.read_all(tmp_path / "t0.jsonl", "task")) == 5
    records.write_records(tmp_path / "g.jsonl", [group("s0", 0.5, 0)], "group")
    records.write_records(tmp_path / "c.jsonl", [task("c0", "synthetic", "s0", created=0)], "task")
    args = ["merge-buffer", "--buffer", str(tmp_path / "b0.parquet"), "--groups", str(tmp_path / "g.jsonl"),
            "--candidates", str(tmp_path / "c.jsonl"), "--iteration", "0", "--batch-size", "3"]
    r1 = runner.invoke(app, [*args, "--out", str(tmp_path / "b1.jsonl"), "--next-batch", str(tmp_path / "t1.jsonl")])
    r2 = runner.invoke(app, [*args, "--out", str(tmp_path / "b1b.jsonl"), "--next-batch", str(tmp_path / "t1b.jsonl")])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output
    assert (tmp_path / "b1.jsonl").read_bytes() == (tmp_path / "b1b.jsonl").read_bytes()
    b1 = by_id(records.read_all(tmp_path / "b1.jsonl", "buffer"))
    assert b1["c0"]["status"] == "active" and b1["s0"]["history"][0]["phi"] == 1.0
    assert len(records.read_all(tmp_path / "t1.jsonl", "task")) == 3
    # a bad option is a user error (exit 2)
    assert main(["merge-buffer", "--out", str(tmp_path / "x.jsonl"), "--next-batch", str(tmp_path / "y.jsonl")]) == 2
    assert not (tmp_path / "x.jsonl").exists()


def test_unseen_tasks_weigh_their_expected_phi():
    """An unseen synthetic task weighs its boundary parent's phi; unseen seeds the pool's mean phi.

    200 seeds, 20 measured hard (phi 0) and 1 on the boundary (phi 1) with 4 children: counting
    every unseen task as phi 1 would drown the children among 179 unseen seeds."""
    buf = init_buffer([task(f"s{i:03d}") for i in range(200)])
    groups = [group(f"s{i:03d}", 0.0, 0, informative=False) for i in range(20)] + [group("s020", 0.5, 0)]
    kids = [task(f"c{i}", origin="synthetic", parent="s020", created=0) for i in range(4)]
    buf, _, _ = merge_buffer(buf, groups, kids, MergeOptions(iteration=0, batch_size=10, seed=0, inject_frac=1.0))
    hits = 0
    for s in range(40):
        batch = merge_buffer(buf, [], [], MergeOptions(iteration=1, batch_size=10, seed=s))[1]
        hits += sum(t["id"].startswith("c") for t in batch)
    # children weigh 1 against 179 unseen seeds at the pool mean (1/21) and 20 hard ones at the
    # floor: they take most of the batch; with unseen = 1 they would get ~4 x 10/183 ~ 0.2 per batch
    assert hits / 40 >= 2.0
    # and every seed still gets its turn over many batches (the floor)
    seen = set()
    for s in range(300):
        seen |= {t["id"] for t in merge_buffer(buf, [], [], MergeOptions(iteration=1, batch_size=10, seed=s))[1]}
    assert len(seen) >= 190


def test_beta_zero_never_injects_the_no_inject_ablation():
    """INJECT_FRAC=0 (the study's no-inject arm): candidates are kept, pending, and never drawn."""
    buf = seeds(10)
    for it in range(4):
        cands = [task(f"c{it}-{i}", "synthetic", "s0", created=it) for i in range(3)]
        groups = [group(f"s{i}", 0.5, it) for i in range(10)]
        buf, batch, summary = merge_buffer(buf, groups, cands, MergeOptions(iteration=it, inject_frac=0.0, batch_size=4, seed=it))
        valid(buf)
        assert summary["candidates_added"] == 3 and summary.get("activated", 0) == 0
        assert all(t["origin"] == "seed" for t in batch) and len(batch) == 4
    pending = [e for e in buf if e["status"] == "pending"]
    assert len(pending) == 12 and all(e["origin"] == "synthetic" for e in pending)
    assert {e["status"] for e in buf if e["origin"] == "seed"} == {"active"}


def test_no_retire_keeps_every_synthetic_task_as_the_old_thresholds_did(tmp_path):
    """--no-retire (RETIRE=off, the study's no-retire arm) retires nothing but over --p-max, and gives
    the bytes the thresholds no task can cross gave before it existed."""
    def run(**opts):
        buf = seeds(2) + init_buffer([task(k, "synthetic", "s0") for k in ("m", "u", "st", "ok")])
        for it in range(4):
            groups = [group("m", 1.0, it), group("u", 0.0, it), group("st", 0.5, it, informative=False),
                      group("ok", 0.5, it), group("s0", 1.0, it)]
            buf, _, summary = merge_buffer(buf, groups, [], MergeOptions(iteration=it, **{"burn_in": 1, "stale_iters": 1, **opts}))
        return buf, summary

    retired, _ = run()
    assert {e["id"]: e["retire_reason"] for e in retired if e["status"] == "retired"} == {"m": "mastered", "u": "unsolvable", "st": "stale"}
    kept, summary = run(retire=False)
    assert all(e["status"] == "active" for e in kept) and not any(k.startswith("retired") or k == "seed_protected" for k in summary)
    assert kept == run(mastered=2, unsolvable=-1, stale_iters=1000000)[0]
    capped, _ = run(retire=False, p_max=2)  # the cap still applies: two of the four synthetic tasks go
    assert sorted(e["retire_reason"] for e in capped if e["status"] == "retired") == ["capacity", "capacity"]
    # the CLI switch, and its default on
    records.write_records(tmp_path / "b.jsonl", retired, "buffer")
    records.write_records(tmp_path / "g.jsonl", [group("ok", 1.0, 4)], "group")
    for flags, name in ((["--no-retire"], "off"), (["--mastered", "2"], "thresholds"), ([], "on")):
        assert main(["--quiet", "merge-buffer", "--buffer", str(tmp_path / "b.jsonl"), "--groups", str(tmp_path / "g.jsonl"),
                     "--iteration", "4", "--ema-decay", "0", *flags, "--out", str(tmp_path / f"{name}.jsonl"),
                     "--next-batch", str(tmp_path / f"{name}-next.jsonl")]) == 0
    status = {name: by_id(records.read_all(tmp_path / f"{name}.jsonl", "buffer"))["ok"]["status"] for name in ("off", "thresholds", "on")}
    assert status == {"off": "active", "thresholds": "active", "on": "retired"}
