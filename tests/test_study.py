"""`rods report STUDY --study` on a hand-made study, and `make study`'s plan: each ablation arm
changes exactly the stage options it names and nothing else."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from rodscli import records
from rodscli.cli import main
from rodscli.schemas import SKILLS
from rodscli.stages import study
from rodscli.stages.eval import EvalOptions, aggregate, task_record

REPO = Path(__file__).resolve().parents[1]
N_TASKS = 8  # two per skill


def _eval_file(path: Path, iteration: int, progress: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = EvalOptions(iteration=iteration)
    tasks = []
    for i, p in enumerate(progress):
        episode = {"task_id": f"h{i}", "skill": SKILLS[i % 4], "outcome": 1.0 if p >= 1.0 else 0.0, "progress": p,
                   "validity": 1.0, "calls": [], "finish_reason": "done"}
        tasks.append(task_record([episode], None, "ckpt", cfg))
    records.write_records(path, tasks + aggregate(tasks), "eval")


def _groups(path: Path, informative: int, n_groups: int = 4, prefix: str = "t") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_groups):
        mean = 0.5 if i < informative else 0.0
        rows.append({"task_id": f"{prefix}{i}", "skill": "base", "n": 4, "mean": mean, "var": 0.25 if mean else 0.0,
                     "min": 0.0, "max": 1.0 if mean else 0.0, "phi": 4 * mean * (1 - mean), "zone": "boundary" if mean else "hard",
                     "informative": bool(mean), "selected": False, "rank": None})
    records.write_records(path, rows, "group")


START = [0.0, 0.5, 0.25, 0.0, 1.0, 0.5, 0.0, 0.25]


@pytest.fixture
def study_dir(tmp_path):
    """rods: 3 seeds, static: 3 seeds, random: 2 seeds; 2 iterations, held-out after each.
    static gains 0.1 on every task over the start in every seed; rods gains 0.1 + 0.05 x (seed + 1)
    (so rods - static = 0.05, 0.10, 0.15 by seed, 0.10 on average); random gains nothing."""
    root = tmp_path / "study"
    gains = {"rods": [0.15, 0.20, 0.25], "static": [0.1, 0.1, 0.1], "random": [0.0, 0.0]}
    for arm, per_seed in gains.items():
        for seed, gain in enumerate(per_seed):
            run = root / arm / f"seed{seed}"
            _eval_file(run / "setup" / "eval.parquet", 0, START)
            for n in range(2):
                _groups(run / f"iter_{n:03d}" / "groups.parquet", informative=1 + seed + n)
                _eval_file(run / f"iter_{n:03d}" / "eval.parquet", n + 1, [min(1.0, p + gain * (n + 1) / 2) if p < 1 else p for p in START])
    (root / "times.tsv").write_text("rods\t0\t100\nrods\t0\t20\nstatic\t0\t90\n")
    return root


def test_study_runs_are_found_in_the_papers_order(study_dir):
    arms = study.study_runs(study_dir)
    assert list(arms) == ["rods", "static", "random"]
    assert list(arms["rods"]) == [0, 1, 2] and list(arms["random"]) == [0, 1]


def test_curves_are_means_with_bands_across_seeds(study_dir):
    s = study.summarize_study(study_dir, n_boot=200)
    inf = s["curves"]["rods"]["informative"]
    # iteration 0: seeds have 1, 2, 3 of 4 groups informative -> mean 0.5, s = 0.25, t(2) = 4.3027
    assert inf[0]["x"] == 0 and inf[0]["n"] == 3 and inf[0]["mean"] == pytest.approx(0.5)
    assert inf[0]["high"] - inf[0]["mean"] == pytest.approx(4.3027 * 0.25 / 3 ** 0.5, abs=1e-4)
    held = s["curves"]["static"]["heldout_progress"]
    assert [p["x"] for p in held] == [0, 1, 2]
    # every seed of static is the same: a zero-width band
    assert held[2]["low"] == pytest.approx(held[2]["mean"]) == pytest.approx(held[2]["high"])


def test_final_table_and_paired_differences(study_dir):
    s = study.summarize_study(study_dir, n_boot=2000)
    final = s["final"]
    assert final["iteration"] == 2 and final["n_tasks"] == N_TASKS
    assert final["columns"] == ["overall", *SKILLS]
    # task 4 starts at 1.0 and cannot gain: static's overall gain is 0.1 on 7 of 8 tasks
    assert final["vs_start"]["static"]["progress/overall"]["diff"] == pytest.approx(0.1 * 7 / 8)
    assert final["vs_start"]["static"]["progress/overall"]["excludes_zero"]
    d = final["vs_baseline"]["rods"]["progress/overall"]
    assert d["diff"] == pytest.approx(0.1 * 7 / 8) and d["seeds"] == [0, 1, 2]
    # the seeds' differences are 0.05, 0.10, 0.15 (x 7/8): the interval spans them, excludes 0
    assert 0.0 < d["low"] < d["diff"] < d["high"] < 0.15
    # random has seeds 0 and 1 only: paired with static's seeds 0 and 1; it gained nothing
    r = final["vs_baseline"]["random"]["progress/overall"]
    assert r["seeds"] == [0, 1] and r["diff"] == pytest.approx(-0.1 * 7 / 8)
    # per skill: base holds tasks 0 and 4 (4 is at 1.0), so static's base gain is 0.05
    assert final["arms"]["static"]["progress/base"] == pytest.approx((0.1 + 1.0) / 2)
    assert "static" not in final["vs_baseline"]
    assert s["times"]["rods"]["0"] == 120 and s["time_total_s"] == 210


def test_a_run_that_has_not_evaluated_yet_is_left_out(study_dir, tmp_path, capsys):
    """While a study runs, the next arm's run folder exists before its start eval: the report
    leaves it out (and says so) instead of failing on it."""
    (study_dir / "binary" / "seed0" / "setup").mkdir(parents=True)
    s = study.summarize_study(study_dir, n_boot=200)
    assert s["pending"] == ["binary/seed0"] and "binary" not in s["final"]["arms"]
    assert s["final"]["iteration"] == 2
    assert main(["report", str(study_dir), "--study", "--out", str(tmp_path / "rep")]) == 0
    assert "not yet at the last held-out eval: binary/seed0" in capsys.readouterr().out
    # once it has its start eval it is still in progress: left out, the table stays at iteration 2
    _eval_file(study_dir / "binary" / "seed0" / "setup" / "eval.parquet", 0, START)
    s = study.summarize_study(study_dir, n_boot=200)
    assert s["pending"] == ["binary/seed0"] and "binary" not in s["final"]["arms"]
    assert s["final"]["iteration"] == 2 and s["final"]["arms"]["rods"]["seeds"] == [0, 1, 2]


def test_diagnosis_counts_the_held_out_changes_and_the_training_groups(study_dir):
    """static gains on the 7 tasks below 1.0 in every seed, random on none; the groups are the
    fixture's: seed k, iteration n has 1 + k + n informative groups of 4, all base."""
    s = study.summarize_study(study_dir, n_boot=200)
    held = s["diagnosis"]["heldout"]
    assert held["iteration"] == 2
    static, random = held["arms"]["static"], held["arms"]["random"]
    assert (static["runs"], static["tasks_up"], static["tasks_down"], static["tasks_changed"]) == (3, 7, 0, 7)
    assert static["changed"]["h0"] == 3 and "h4" not in static["changed"]  # h4 starts at 1.0
    assert (random["tasks_up"], random["tasks_changed"]) == (0, 0)
    assert held["changed_in_every_run"] == []  # random changed nothing
    groups = s["diagnosis"]["groups"]["rods"]
    # 3 seeds x 2 iterations x 4 groups; informative 1+2, 2+3, 3+4 of 8 -> 15 of 24
    assert groups["groups"] == 24 and groups["by_skill"]["base"]["informative"] == pytest.approx(15 / 24)
    assert groups["zones"] == {"boundary": 15, "hard": 9}
    header, rows = study.diagnosis.change_rows(s["diagnosis"])
    assert header[0] == "arm" and rows[1][:5] == ["static", "3", "7.0", "0.0", "7"]


def test_diagnosis_names_the_runs_that_rolled_out_the_baselines_batches(study_dir, capsys):
    """The fixture's arms roll out the same 4 task ids at every iteration; rods seed 1 is given a
    different batch at iteration 1 (one synthesized task in it)."""
    _groups(study_dir / "rods" / "seed1" / "iter_001" / "groups.parquet", informative=3, prefix="syn")
    batches = study.summarize_study(study_dir, n_boot=200)["diagnosis"]["batches"]
    assert batches["baseline"] == "static" and set(batches["arms"]) == {"rods", "random"}
    rods = batches["arms"]["rods"]
    assert rods["seeds"]["1"] == {"compared": 2, "different": [1]} and rods["seeds"]["0"] == {"compared": 2, "different": []}
    assert rods["same_seeds"] == [0, 2] and batches["arms"]["random"]["same_seeds"] == [0, 1]
    warnings = study.diagnosis.batch_warnings(batches)
    assert len(warnings) == 2 and warnings[0].startswith("rods rolled out exactly the static arm's batches")
    assert "seed(s) 0, 2 of 3" in warnings[0] and "0 by construction" in warnings[0]
    # the printed report and the page say it too
    assert main(["report", str(study_dir), "--study", "--out", str(study_dir / "rep"), "--no-plots"]) == 0
    assert "seed(s) 0, 2 of 3" in capsys.readouterr().out.replace("\n", " ")
    assert "seed(s) 0, 2 of 3" in (study_dir / "rep" / "index.html").read_text()
    # `rods report RUN RUN` (make compare) says it of two runs that rolled out the same tasks
    capsys.readouterr()
    pair = [str(study_dir / "rods" / "seed0"), str(study_dir / "static" / "seed0"), str(study_dir / "rods" / "seed1")]
    assert main(["report", *pair, "--name", "rods", "--name", "static", "--name", "rods1", "--out", str(study_dir / "r2"), "--no-plots"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "rods and static rolled out the same tasks at all 2 iterations" in out
    assert "rods1 rolled out" not in out and "and rods1 rolled out" not in out  # its iteration 1 differs
    assert "0 by construction" in (study_dir / "r2" / "index.html").read_text()


def test_budget_to_match_the_baseline(study_dir):
    s = study.summarize_study(study_dir, n_boot=200)
    m = s["budget_to_match"]
    # static's final mean is reached by rods after 1 of static's 2 iterations (its half-way gain
    # is 0.1 on average, as static's final): fraction 0.5; random never reaches it
    assert m["rods"]["iteration"] == 1 and m["rods"]["fraction"] == 0.5
    assert m["random"]["iteration"] is None


def test_cli_study_report_writes_page_json_and_table(study_dir, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(study_dir), "--study", "--out", str(out), "--n-boot", "500", "--no-plots"]) == 0
    data = json.loads((out / "study.json").read_text())
    assert data["final"]["vs_baseline"]["rods"]["progress/overall"]["excludes_zero"] is True
    page = (out / "index.html").read_text()
    assert "rods - static" in page and "held-out progress" in page
    header, rows = study.table_cells(data, "progress")
    assert header[:3] == ["arm", "seeds", "overall"]
    assert rows[0][:3] == ["rods", "3", f"{100 * data['final']['arms']['rods']['progress/overall']:.2f}"]
    assert re.match(r"\+8\.75 \[\+\d\.\d\d, \+\d+\.\d\d\]\*", rows[1][2])
    assert "rods - static" in capsys.readouterr().out


def test_cli_study_report_draws_the_bands(study_dir, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", str(study_dir), "--study", "--out", str(out), "--n-boot", "200"]) == 0
    assert (out / "training.png").stat().st_size > 1000 and (out / "heldout.png").stat().st_size > 1000


def test_cli_study_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--study", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no ARM/seedS run folders" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    bad = tmp_path / "s"
    _eval_file(bad / "rods" / "seed0" / "setup" / "eval.parquet", 0, START)
    (bad / "times.tsv").write_text("rods\tzero\t1\n")
    assert main(["report", str(bad), "--study", "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "times.tsv:1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r2").exists()


# ---------------------------------------------------------------------------------------
# make study: the plans


# retirement off: merge-buffer's switch
RETIRE_OFF = ["+ --no-retire"]
ABLATIONS = {
    # arm: the options (of the stage lines) it changes against the rods arm, and nothing else
    "static": {"detect": ["--top-m 4 -> --top-m 0"], "synthesize": ["--per-seed 2 -> --per-seed 0"],
               "merge-buffer": ["--floor 0.05 -> --floor 1.0", *RETIRE_OFF]},
    "random": {"detect": ["--select phi -> --select random"]},
    "binary": {"score": ["--reward progress -> --reward outcome"]},
    "no-retire": {"merge-buffer": RETIRE_OFF},
    "no-inject": {"merge-buffer": ["--inject-frac 0.2 -> --inject-frac 0"]},
}


def _plan(tmp_path: Path, arms: str, *extra: str) -> list[str]:
    root = tmp_path / "st"
    (root / "start" / "setup" / "policy").mkdir(parents=True, exist_ok=True)  # as if study-start had run
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "-o", "install", "-n", "study",
                           f"STUDY={root}", f"ARMS={arms}", "SEEDS=0 1", "STUDY_ITER=2", *extra],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def _stage_lines(lines: list[str], arm: str, seed: int) -> dict[str, list[str]]:
    """{stage: its command lines} of one arm x seed run, with the arm's folder name made neutral."""
    out: dict[str, list[str]] = {}
    for ln in lines:
        m = re.search(r"rods\s+--seed \d+ ([a-z-]+) ", ln)
        if m and f"/{arm}/seed{seed}/" in ln:
            out.setdefault(m.group(1), []).append(ln.replace(f"/{arm}/seed{seed}/", "/ARM/"))
    return out


def _options(line: str) -> tuple[list[str], dict[str, str]]:
    """A command line as (its words before the first option, {option: value or ''})."""
    words = line.split()
    head = next((i for i, w in enumerate(words) if w.startswith("--") and i > words.index("--seed") + 1), len(words))
    opts, i = {}, head
    while i < len(words):
        has_value = i + 1 < len(words) and not words[i + 1].startswith("--")
        opts[words[i]] = words[i + 1] if has_value else ""
        i += 2 if has_value else 1
    return words[:head], opts


def _option_changes(before: str, after: str) -> list[str]:
    (cmd_a, a), (cmd_b, b) = _options(before), _options(after)
    assert cmd_a == cmd_b
    changes = [f"+ {k} {b[k]}".strip() for k in b if k not in a] + [f"- {k}" for k in a if k not in b]
    return changes + [f"{k} {a[k]} -> {k} {b[k]}" for k in a if k in b and a[k] != b[k]]


@pytest.mark.parametrize("arm", list(ABLATIONS))
def test_each_ablation_changes_exactly_what_it_names(tmp_path, arm):
    lines = _plan(tmp_path, f"rods {arm}")
    for seed in (0, 1):
        base, abl = _stage_lines(lines, "rods", seed), _stage_lines(lines, arm, seed)
        # one eval per run: its start's is the study start's, copied (START_EVAL), not run again
        assert set(base) == set(abl) and len(base["rollout"]) == 2 and len(base["eval"]) == 1
        for stage in base:
            changed = sorted({c for x, y in zip(base[stage], abl[stage], strict=True) for c in _option_changes(x, y)})
            assert changed == sorted(ABLATIONS[arm].get(stage, [])), (arm, stage, changed)


def test_study_plan_shares_start_budget_and_held_out(tmp_path):
    lines = _plan(tmp_path, "rods static", "STUDY_BATCH=5", "STUDY_G=3")
    root = tmp_path / "st"
    # one shared start (an SFT warm start, then the 96 held-out tasks of world 99)
    assert sum(f"--out {root}/start/setup/policy.tmp" in ln for ln in lines) == 1
    assert any("--seed 99 tasks builtin --per-skill 12" in ln and "start/setup/heldout.jsonl" in ln for ln in lines)
    runs = [ln for ln in lines if "-o install loop" in ln and "RUN=" in ln and "/start" not in ln.split("RUN=")[1].split()[0]]
    # seed by seed: every arm of seed 0 before seed 1
    assert [re.search(r"RUN=\S+/(\w+)/seed(\d)", ln).groups() for ln in runs] == [("rods", "0"), ("static", "0"), ("rods", "1"), ("static", "1")]
    for ln in runs:
        assert f"POLICY={root}/start/setup/policy" in ln and "SFT=off" in ln
        assert "ITER=2 BATCH=5 G=3" in ln and "--seed 99 tasks builtin --per-skill 12" in ln
    rollouts = [ln for ln in lines if " rollout " in ln and "rods" in ln]
    assert len(rollouts) == 8 and all("--group-size 3" in ln for ln in rollouts)
    # the start is evaluated once; each run copies that eval as its own start's
    evals = [ln for ln in lines if re.search(r"rods\s+--seed \d+ eval ", ln)]
    assert sum(f"--out {root}/start/setup/eval.parquet" in ln for ln in evals) == 1
    assert not any("/seed" in ln and "setup/eval.parquet" in ln for ln in evals)
    copies = [ln for ln in lines if ln.startswith(f"cp {root}/start/setup/eval.parquet ")]
    assert [c.split()[2] for c in copies] == [f"{root}/{a}/seed{s}/setup/eval.parquet.tmp" for s in (0, 1) for a in ("rods", "static")]
    assert lines[-2].endswith(f"report {root} --study --out {root}/report")


def test_a_smol_study_varies_the_smol_recipe_at_its_own_size(tmp_path):
    lines = _plan(tmp_path, "rods static", "STUDY_OF=smol", "SMOL_GGUF=/x/SmolLM2.gguf", f"SMOL_HF={tmp_path}/hf")
    root = tmp_path / "st"
    # the start: SmolLM2's two SFT passes from its converted GGUF file, then 24 held-out tasks
    assert "loop PIPELINE=smol RUN=" in next(ln for ln in lines if f"RUN={root}/start" in ln)
    assert sum("--mode sft" in ln and f"{root}/start/setup/" in ln for ln in lines) == 2
    assert any("init-policy --from-gguf /x/SmolLM2.gguf" in ln for ln in lines)
    runs = [ln for ln in lines if "-o install loop" in ln and "/seed" in ln]
    assert [ln.split(" RUN=")[0].split("loop ")[1] for ln in runs] == ["PIPELINE=smol", "PIPELINE=static STATIC_OF=smol"] * 2
    # the smol size (STUDY_ITER=2 comes from _plan, as the smol default), lr 1e-5, every 4th held-out task
    assert all("ITER=2 BATCH=4 G=4 EVAL_EVERY=2 LR=1e-5" in ln and 'awk "NR % 4 == 1"' in ln for ln in runs)
    # the recipe's sampling reaches both arms; static changes only what it names
    for seed in (0, 1):
        base, static = _stage_lines(lines, "rods", seed), _stage_lines(lines, "static", seed)
        assert all("--temperature 0.7" in ln and "--batch-size 8" in ln for ln in base["rollout"] + static["rollout"])
        changed = sorted({c for stage in base for x, y in zip(base[stage], static[stage], strict=True)
                          for c in _option_changes(x, y)})
        assert changed == sorted(["--top-m 2 -> --top-m 0", "--per-seed 2 -> --per-seed 0", "--floor 0.05 -> --floor 1.0", *RETIRE_OFF])


@pytest.mark.parametrize("recipe", ["nope", "static"])
def test_an_unknown_study_recipe_stops_before_anything_runs(tmp_path, recipe):
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "-o", "install", "-n", "study",
                           f"STUDY={tmp_path}/st", f"STUDY_OF={recipe}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and f"unknown STUDY_OF '{recipe}'" in proc.stderr and "rods" not in proc.stdout


def test_a_run_copies_its_start_eval_only_for_the_same_held_out_tasks(tmp_path):
    start = tmp_path / "start" / "setup"
    _eval_file(start / "eval.parquet", 0, [0.5, 1.0])
    (start / "heldout.jsonl").write_text('{"id": "h0"}\n{"id": "h1"}\n')
    (tmp_path / "ckpt").mkdir()

    def run(name: str, heldout: str) -> subprocess.CompletedProcess:
        target = tmp_path / name / "setup" / "eval.parquet"
        return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "-o", "install", str(target),
                               f"RUN={tmp_path / name}", f"POLICY={tmp_path / 'ckpt'}", "SFT=off",
                               f"START_EVAL={start / 'eval.parquet'}", f"HELDOUT_TASKS_CMD=printf '{heldout}'"],
                              capture_output=True, text=True, timeout=60)

    same = run("same", '{"id": "h0"}\\n{"id": "h1"}\\n')
    assert same.returncode == 0, same.stderr
    assert (tmp_path / "same" / "setup" / "eval.parquet").read_bytes() == (start / "eval.parquet").read_bytes()
    other = run("other", '{"id": "h9"}\\n')
    assert other.returncode != 0 and "not the held-out tasks of START_EVAL" in other.stderr
    assert not (tmp_path / "other" / "setup" / "eval.parquet").exists()


def test_unknown_arm_stops_before_anything_runs(tmp_path):
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "-o", "install", "-n", "study",
                           f"STUDY={tmp_path}/st", "ARMS=rods nope"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "unknown arm 'nope'" in proc.stderr and "rods" not in proc.stdout


# a tiny real study: the untrained tiny policy, one iteration of 3 tasks x 4, 2 held-out tasks;
# training tasks whose first user turn needs no call, so groups land in the boundary zone and
# synthesis has seeds (as tests/test_loop.py)
TINY_STUDY = [
    "STUDY_ITER=1", "STUDY_BATCH=3", "STUDY_G=4", "STUDY_EVAL_EVERY=1", "MAX_NEW_TOKENS=24", "MAX_TOKENS=2048",
    "TOP_M=2", "PER_SEED=1", "RODS_FLAGS=--quiet", "STUDY_START_SETTINGS=SFT=off",
    "STUDY_HELDOUT_CMD=$(RODS) --quiet --seed 99 tasks builtin --per-skill 1 --out - | head -2",
    "TRAIN_TASKS_CMD=$(RODS) tasks builtin --out - | grep -F '\"reference\":[[],'",
]


@pytest.mark.slow
def test_tiny_study_runs_each_ablation_for_real_and_resumes(tmp_path):
    root = tmp_path / "st"
    cmd = ["make", "--no-print-directory", "-C", str(REPO), "-o", "install", "study", f"STUDY={root}",
           "ARMS=random no-inject", "SEEDS=0", *TINY_STUDY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # random: detect ran with --select random and drew TOP_M groups whatever their zone
    groups_path = root / "random" / "seed0" / "iter_000" / "groups.parquet"
    assert "--select" in (prov := records.read_provenance(groups_path)["command"]) and "random" in prov
    assert sum(g["selected"] for g in records.read_all(groups_path, "group")) == 2
    # (binary changes only `rods score --reward`, run for real in tests/test_score.py)
    # no-inject: candidates were made, none is active
    buffer = records.read_all(root / "no-inject" / "seed0" / "iter_000" / "buffer.parquet", "buffer")
    synthetic = [e for e in buffer if e["origin"] == "synthetic"]
    assert synthetic and {e["status"] for e in synthetic} == {"pending"}
    data = json.loads((root / "report" / "study.json").read_text())
    assert list(data["arms"]) == ["random", "no-inject"] and data["final"]["iteration"] == 1
    assert len((root / "times.tsv").read_text().splitlines()) == 2
    # a finished study is up to date: run again, no stage has anything left to do
    again = subprocess.run([*cmd[:6], "-n", *cmd[6:]], env=env, capture_output=True, text=True, timeout=300)
    stages = [ln for ln in again.stdout.splitlines() if re.match(r"\S+/rods\s+--quiet\s+--seed \d+ (?!tasks )[a-z-]+ ", ln)]
    assert again.returncode == 0 and stages == [], stages[:3]


def test_a_study_with_no_eval_yet_is_a_clear_error(tmp_path):
    from rodscli.errors import InputError

    (tmp_path / "s" / "rods" / "seed0" / "setup").mkdir(parents=True)
    with pytest.raises(InputError, match="no run of the study has a held-out eval yet") as err:
        study.summarize_study(tmp_path / "s", n_boot=10)
    assert str(tmp_path / "s") in str(err.value)
