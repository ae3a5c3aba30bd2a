"""`rods detect` on a hand-made scored file: statistics, zones, history and the quota selection."""

from __future__ import annotations

import polars as pl
import pytest

from rodscli import records, schemas
from rodscli.cli import main
from rodscli.errors import InputError, OptionError, ValidationError
from rodscli.stages.detect import DetectConfig, detect, scan_scored, summary_table

# task id -> (skill, rewards of its group); hand-computed statistics below
REWARDS = {
    "t01": ("base", [0.0, 0.0, 0.0, 0.0]),
    "t02": ("base", [1.0, 1.0, 1.0, 1.0]),
    "t03": ("base", [0.0, 0.5, 0.5, 1.0]),
    "t04": ("base", [0.25, 0.25, 0.75, 0.75]),
    "t05": ("miss_func", [0.0, 1.0, 1.0, 1.0]),
    "t06": ("miss_func", [0.0, 0.0, 0.0, 1.0]),
    "t07": ("miss_param", [0.5, 0.5, 0.5, 0.5]),
    "t08": ("long_context", [0.75, 1.0, 1.0, 1.0]),
    "t09": ("base", [0.25, 0.0, 0.5, 0.25]),
    "t10": ("miss_param", [0.0, 0.4]),
    "t11": ("base", [0.85, 0.85]),
}
# task id -> (mean, population variance, phi = 4 m (1 - m), zone)
EXPECTED = {
    "t01": (0.0, 0.0, 0.0, "hard"),
    "t02": (1.0, 0.0, 0.0, "mastered"),
    "t03": (0.5, (0.25 + 0 + 0 + 0.25) / 4, 1.0, "boundary"),
    "t04": (0.5, 0.0625, 1.0, "boundary"),
    "t05": (0.75, (0.5625 + 3 * 0.0625) / 4, 0.75, "boundary"),
    "t06": (0.25, (3 * 0.0625 + 0.5625) / 4, 0.75, "boundary"),
    "t07": (0.5, 0.0, 1.0, "boundary"),
    "t08": (0.9375, (0.1875**2 + 3 * 0.0625**2) / 4, 4 * 0.9375 * 0.0625, "mastered"),
    "t09": (0.25, (0 + 0.0625 + 0.0625 + 0) / 4, 0.75, "boundary"),
    "t10": (0.2, 0.04, 4 * 0.2 * 0.8, "boundary"),  # alpha_low itself is boundary
    "t11": (0.85, 0.0, 4 * 0.85 * 0.15, "boundary"),  # alpha_high itself is boundary
}


def scored_rows(iteration: int = 3) -> list[dict]:
    rows = []
    for task_id, (skill, rewards) in REWARDS.items():
        for i, r in enumerate(rewards):
            group = f"{task_id}@{iteration}"
            rows.append({
                "rollout_id": f"{group}/{i}", "task_id": task_id, "group_id": group, "sample_index": i,
                "policy_id": "p", "iteration": iteration, "messages": [], "calls": [],
                "token_ids": [1, 2, 3], "logprobs": [0.0, -0.5, -0.1], "loss_mask": [0, 1, 1],
                "finish_reason": "done", "n_user_turns": 1, "n_turns_reached": 1, "turn_state_hashes": ["h"],
                "skill": skill, "origin": "seed", "domain": "bfcl", "reward": r, "reward_name": "progress",
                "progress": r, "outcome": float(r == 1.0), "turn_scores": [int(r == 1.0)], "validity": 1.0,
                "coverage": 1.0, "efficiency": 0.0, "name_precision": 1.0, "arg_accuracy": 1.0, "format_penalty": 0.0,
            })
    return rows


def by_id(groups):
    return {g["task_id"]: g for g in groups}


def test_statistics_and_zones_match_the_hand_computed_numbers():
    groups = detect(scored_rows())
    assert [g["task_id"] for g in groups] == sorted(REWARDS)
    for task_id, (mean, var, phi, zone) in EXPECTED.items():
        g = by_id(groups)[task_id]
        assert g["n"] == len(REWARDS[task_id][1])
        assert g["mean"] == pytest.approx(mean, abs=1e-12)
        assert g["var"] == pytest.approx(var, abs=1e-12)
        assert g["phi"] == pytest.approx(phi, abs=1e-12)
        assert g["zone"] == zone, task_id
        assert g["informative"] == (var > 0)
        assert (g["min"], g["max"]) == (min(REWARDS[task_id][1]), max(REWARDS[task_id][1]))
        assert g["skill"] == REWARDS[task_id][0] and g["group_id"] == f"{task_id}@3" and g["iteration"] == 3
        assert schemas.problems("group", g) == []


def selected(groups):
    return [g["task_id"] for g in sorted((g for g in groups if g["selected"]), key=lambda g: g["rank"])]


def test_quota_selection():
    rows = scored_rows()
    # boundary by (phi desc, task_id): t03 t04 t07 (1.0), t05 t06 t09 (0.75), t10 (0.64), t11 (0.51)
    # default quota with 3 skills in the boundary zone and M = 3: ceil(3/3) = 1 per skill
    assert selected(detect(rows, DetectConfig(top_m=3))) == ["t03", "t07", "t05"]
    # M = 5, quota 1: t03 t07 t05 by quota, then the two slots left go to t04 and t06
    five = detect(rows, DetectConfig(top_m=5, quota_per_skill=1))
    assert selected(five) == ["t03", "t04", "t07", "t05", "t06"]
    assert [by_id(five)[t]["rank"] for t in ("t03", "t04", "t07", "t05", "t06")] == [0, 1, 2, 3, 4]
    assert by_id(five)["t09"]["rank"] is None and not by_id(five)["t09"]["selected"]
    # without refill the quota is a hard cap
    assert selected(detect(rows, DetectConfig(top_m=5, quota_per_skill=1, refill=False))) == ["t03", "t07", "t05"]
    # M = 4, default quota ceil(4/3) = 2: t03 t04 (base full), t07, t05
    assert selected(detect(rows, DetectConfig(top_m=4))) == ["t03", "t04", "t07", "t05"]
    # everything boundary fits: all 8, never a hard or mastered group
    everything = detect(rows, DetectConfig(top_m=100))
    assert selected(everything) == ["t03", "t04", "t07", "t05", "t06", "t09", "t10", "t11"]


def test_thresholds_are_options():
    groups = by_id(detect(scored_rows(), DetectConfig(alpha_low=0.3, alpha_high=0.7)))
    assert [groups[t]["zone"] for t in ("t06", "t10", "t03", "t05", "t11")] == ["hard", "hard", "boundary", "mastered", "mastered"]
    with pytest.raises(OptionError):
        detect(scored_rows(), DetectConfig(alpha_low=0.9, alpha_high=0.5))
    with pytest.raises(OptionError):
        detect(scored_rows(), DetectConfig(by="skill"))


def test_group_by_group_id_and_input_order_do_not_matter():
    rows = scored_rows()
    a = detect(rows, DetectConfig(by="group_id"))
    b = detect(list(reversed(rows)), DetectConfig(by="group_id"))
    assert a == detect(rows, DetectConfig(by="group_id"))  # deterministic
    for x, y in zip(a, b, strict=True):  # order-free up to float summation order
        assert {k: v for k, v in x.items() if not isinstance(v, float)} == {k: v for k, v in y.items() if not isinstance(v, float)}
        assert [v for v in x.values() if isinstance(v, float)] == pytest.approx([v for v in y.values() if isinstance(v, float)])
    assert len(a) == len(REWARDS) and all(g["group_id"] == f"{g['task_id']}@3" for g in a)
    # two iterations grouped by task: one group, n doubled, no single group id
    two = detect(scored_rows(3) + scored_rows(4))
    g = by_id(two)["t03"]
    assert g["n"] == 8 and g["group_id"] is None and g["iteration"] == 4
    assert g["mean"] == pytest.approx(0.5) and g["var"] == pytest.approx(0.125)


def test_history_from_previous_groups():
    previous = [
        {"task_id": "t03", "skill": "base", "n": 4, "mean": 0.2, "var": 0.1, "min": 0.0, "max": 0.5, "phi": 0.64,
         "zone": "boundary", "informative": True, "selected": False, "rank": None, "iteration": 2,
         "ema_mean": 0.3, "iterations_seen": 2, "zone_counts": {"hard": 1, "boundary": 1, "mastered": 0}},
        {"task_id": "t01", "skill": "base", "n": 4, "mean": 0.1, "var": 0.01, "min": 0.0, "max": 0.2, "phi": 0.36,
         "zone": "hard", "informative": True, "selected": False, "rank": None},
    ]
    groups = by_id(detect(scored_rows(), DetectConfig(ema=0.5), previous))
    assert groups["t03"]["ema_mean"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.5)
    assert groups["t03"]["iterations_seen"] == 3
    assert groups["t03"]["zone_counts"] == {"hard": 1, "boundary": 2, "mastered": 0}
    assert groups["t01"]["ema_mean"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.0)
    assert groups["t01"]["zone_counts"] == {"hard": 2, "boundary": 0, "mastered": 0}
    assert groups["t02"]["ema_mean"] == 1.0 and groups["t02"]["iterations_seen"] == 1
    assert groups["t02"]["zone_counts"] == {"hard": 0, "boundary": 0, "mastered": 1}


def test_parquet_scan_reads_only_the_detect_columns(tmp_path):
    path = tmp_path / "scored.parquet"
    records.write_records(path, scored_rows(), "scored")
    lf = scan_scored(str(path))
    assert lf.collect_schema().names() == ["task_id", "group_id", "reward", "skill", "domain", "origin", "iteration"]
    assert "token_ids" not in lf.explain()
    assert detect(lf) == detect(scored_rows())
    # a file without the optional columns still works
    bare = tmp_path / "bare.parquet"
    pl.DataFrame({"task_id": ["a", "a"], "reward": [0.0, 1.0], "skill": ["base", "base"]}).write_parquet(bare)
    (g,) = detect(scan_scored(str(bare)))
    assert (g["mean"], g["var"], g["zone"], g["group_id"], g["domain"]) == (0.5, 0.25, "boundary", None, None)


def test_bad_inputs_name_the_file_and_row(tmp_path):
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"task_id": ["a", "a", "b"], "reward": [0.0, None, 1.0], "skill": ["base"] * 3}).write_parquet(bad)
    with pytest.raises(ValidationError, match="reward: bad value None") as err:
        scan_scored(str(bad))
    assert err.value.where.endswith("bad.parquet:row 2")
    nocol = tmp_path / "nocol.parquet"
    pl.DataFrame({"task_id": ["a"], "skill": ["base"]}).write_parquet(nocol)
    with pytest.raises(InputError, match="reward"):
        scan_scored(str(nocol))
    with pytest.raises(InputError, match="no such file"):
        scan_scored(str(tmp_path / "missing.parquet"))


def test_summary_table_counts():
    from rich.console import Console

    console = Console(width=140, record=True)
    console.print(summary_table(detect(scored_rows(), DetectConfig(top_m=3))))
    text = console.export_text()
    # all: 11 groups, 1 hard, 8 boundary, 2 mastered, 8 informative, 3 selected
    rows = {line.split()[0]: line.split() for line in text.splitlines()[3:] if line.strip()}
    assert rows["all"] == ["all", "11", "1", "8", "2", "7", "(64%)", "3", "0.522"]
    assert rows["base"][:7] == ["base", "6", "1", "4", "1", "3", "(50%)"]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_cli_detect_end_to_end(tmp_path, capsys, suffix):
    scored = tmp_path / f"scored{suffix}"
    records.write_records(scored, scored_rows(), "scored")
    out = tmp_path / "groups.jsonl"
    args = ["detect", "--scored", str(scored), "--out", str(out), "--top-m", "5", "--quota-per-skill", "1"]
    assert main(args) == 0
    groups = records.read_all(out, "group")
    assert selected(groups) == ["t03", "t04", "t07", "t05", "t06"]
    for task_id, (mean, var, phi, zone) in EXPECTED.items():
        g = by_id(groups)[task_id]
        assert (g["mean"], g["var"], g["phi"], g["zone"]) == pytest.approx((mean, var, phi, zone), abs=1e-12)
    err = capsys.readouterr().err
    assert "boundary" in err and "informative" in err and "11 groups" in err
    # the next iteration reads these groups as --previous
    out2 = tmp_path / "groups2.parquet"
    assert main(["-q", "detect", "--scored", str(scored), "--previous", str(out), "--out", str(out2)]) == 0
    assert {g["iterations_seen"] for g in records.read_all(out2, "group")} == {2}
    assert main(["detect", "--scored", str(scored), "--out", str(out), "--alpha-low", "2"]) == 2


def test_contiguous_fast_path_agrees_with_the_hash_group_by():
    import random

    from rodscli.stages.detect import _runs_stats, frame_of

    rows = scored_rows()
    shuffled = random.Random(0).sample(rows, len(rows))
    # rows written group by group take the segment path; shuffled rows need the hash group-by
    assert _runs_stats(frame_of(rows).collect(), "task_id", "group_id") is not None
    assert _runs_stats(frame_of(shuffled).collect(), "task_id", "group_id") is None
    fast, hashed = detect(rows, DetectConfig(top_m=5)), detect(shuffled, DetectConfig(top_m=5))
    assert [g["task_id"] for g in fast] == [g["task_id"] for g in hashed]
    for x, y in zip(fast, hashed, strict=True):
        assert {k: v for k, v in x.items() if not isinstance(v, float)} == {k: v for k, v in y.items() if not isinstance(v, float)}
        assert [v for v in x.values() if isinstance(v, float)] == pytest.approx([v for v in y.values() if isinstance(v, float)])
    # one task's rows contiguous but from two groups: no single group id, on both paths
    two = [{**r, "group_id": f"{r['task_id']}@{r['sample_index'] % 2}"} for r in rows if r["task_id"] == "t03"]
    assert _runs_stats(frame_of(two).collect(), "task_id", "group_id") is not None
    assert detect(two)[0]["group_id"] is None and detect(list(reversed(two)))[0]["group_id"] is None
    # a task whose skill changes inside its run is not a run: the hash path (min) decides
    odd = [{**r, "skill": "base" if r["sample_index"] else "miss_func"} for r in rows if r["task_id"] == "t05"]
    assert _runs_stats(frame_of(odd).collect(), "task_id", "group_id") is None
    assert detect(odd)[0]["skill"] == "base"


@pytest.mark.parametrize("value", [0.1, 0.2, 0.7, 0.85, 0.9, 1 / 3])
def test_constant_groups_have_exactly_zero_variance(value):
    """Summing 16 copies of 0.7 does not give 16 * 0.7 exactly; a constant group must still
    have mean = its value and variance 0 (not informative) on both paths, with any size."""
    rows = [{"task_id": f"t{n}", "reward": value, "skill": "base"} for n in (3, 7, 16) for _ in range(n)]
    equal = [{"task_id": f"t{i}", "reward": value, "skill": "base"} for i in range(3) for _ in range(16)]
    interleaved = rows[1:] + rows[:1]  # t3 in two runs: the hash group-by
    for data in (rows, equal, interleaved):
        for g in detect(data):
            assert (g["mean"], g["var"], g["informative"]) == (value, 0.0, False), (g["task_id"], g["n"])
            assert g["phi"] == 4 * value * (1 - value)


@pytest.mark.parametrize("seed", range(6))
def test_selection_agrees_with_a_plain_reading_of_the_rule(seed):
    """The selection sorts only the candidates that can be picked (the M best and each
    skill's quota best, with ties); a plain loop over every candidate must pick the same
    groups in the same order, on data full of ties, for any M, quota and refill."""
    import math
    import random

    from rodscli.stages.detect import select_boundary

    rng = random.Random(seed)
    n = rng.choice([0, 1, 7, 60, 400])
    skills = rng.sample(["base", "miss_func", "miss_param", "long_context"], rng.randint(1, 4))
    groups = pl.DataFrame({
        "task_id": [f"t{i:04d}" for i in range(n)],
        "skill": rng.choices(skills, weights=[4 ** k for k in range(len(skills))], k=n),  # some skills rare
        # means in steps of 1/40 (or 1/4: ties everywhere); 0.4/0.6 give phi equal up to rounding
        "phi": [4 * m * (1 - m) for m in (rng.randint(0, steps) / steps for steps in [rng.choice([4, 40])] * n)],
        "zone": [rng.choice(["hard", "boundary", "boundary", "mastered"]) for _ in range(n)],
    }, schema={"task_id": pl.String, "skill": pl.String, "phi": pl.Float64, "zone": pl.String})
    rows = groups.to_dicts()
    for _ in range(8):
        top_m, quota, refill = rng.randint(0, 40), rng.choice([None, 0, 1, 3, 10]), rng.random() < 0.5
        out = select_boundary(groups, DetectConfig(top_m=top_m, quota_per_skill=quota, refill=refill))
        # the rule, read plainly: candidates by (phi desc, row order); quota pass; refill pass
        cands = sorted((i for i, g in enumerate(rows) if g["zone"] == "boundary"), key=lambda i: -round(rows[i]["phi"], 12))
        n_skills = len({rows[i]["skill"] for i in cands})
        q = quota if quota is not None else (math.ceil(top_m / n_skills) if n_skills else 0)
        taken, per_skill = set(), dict.fromkeys(skills, 0)
        for i in cands:
            if len(taken) < top_m and per_skill[rows[i]["skill"]] < q:
                taken.add(i)
                per_skill[rows[i]["skill"]] += 1
        for i in cands:
            if refill and len(taken) < top_m and i not in taken:
                taken.add(i)
        expected = [i for i in cands if i in taken]
        got = sorted(out.filter(pl.col("selected")).with_row_index("i").rows(named=True), key=lambda g: g["rank"])
        assert [int(g["task_id"][1:]) for g in got] == expected, (top_m, quota, refill)
        assert [g["rank"] for g in got] == list(range(len(expected)))
        assert out["rank"].null_count() == n - len(expected)


def test_random_selection_ignores_phi_and_zones_and_depends_only_on_the_seed():
    """The random-selection ablation: M groups drawn uniformly from all groups, seeded."""
    rows = scored_rows()
    phi_pick = by_id(detect(rows, DetectConfig(top_m=4)))
    draws = []
    for seed in range(40):
        groups = detect(rows, DetectConfig(top_m=4, select="random", seed=seed))
        # the statistics and zones are those of the phi selection; only selected/rank differ
        for g in groups:
            same = {k: v for k, v in g.items() if k not in ("selected", "rank")}
            assert same == {k: v for k, v in phi_pick[g["task_id"]].items() if k not in ("selected", "rank")}
        chosen = selected(groups)
        assert len(chosen) == 4 and sorted(by_id(groups)[t]["rank"] for t in chosen) == [0, 1, 2, 3]
        assert chosen == selected(detect(rows, DetectConfig(top_m=4, select="random", seed=seed)))  # reproducible
        draws.append(chosen)
    picked = {t for d in draws for t in d}
    # over 40 draws of 4 of 11 groups, hard and mastered groups are drawn too (never by phi)
    assert {"t01", "t02", "t08"} <= picked and len({tuple(d) for d in draws}) > 30
    # M larger than the groups: every group, in a random order
    assert sorted(selected(detect(rows, DetectConfig(top_m=50, select="random")))) == sorted(REWARDS)
    with pytest.raises(OptionError):
        detect(rows, DetectConfig(select="best"))


def test_cli_detect_select_random_uses_the_global_seed(tmp_path):
    scored = tmp_path / "scored.parquet"
    records.write_records(scored, scored_rows(), "scored")
    picks = []
    for seed, name in ((1, "a"), (1, "b"), (2, "c")):
        out = tmp_path / f"{name}.jsonl"
        assert main(["-q", "--seed", str(seed), "detect", "--scored", str(scored), "--out", str(out), "--top-m", "3", "--select", "random"]) == 0
        picks.append(selected(records.read_all(out, "group")))
    assert picks[0] == picks[1] and len(picks[0]) == 3
    assert main(["-q", "detect", "--scored", str(scored), "--out", str(tmp_path / "x.jsonl"), "--select", "nope"]) == 2
