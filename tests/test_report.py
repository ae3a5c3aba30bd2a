"""`rods report` on small hand-made run folders: the numbers in the table, and the files."""

from __future__ import annotations

import io
import json

import pytest

from rodscli import records
from rodscli.cli import main
from rodscli.stages.eval import EvalOptions, aggregate, task_record
from rodscli.stages.report import ReportOptions, render_tables, report, summarize_run, table_rows


def _group(task_id: str, mean: float, n: int = 4, skill: str = "base") -> dict:
    zone = "hard" if mean < 0.2 else ("mastered" if mean > 0.85 else "boundary")
    var = 0.0 if mean in (0.0, 1.0) else mean * (1 - mean)  # a 0/1 reward: Bernoulli variance
    return {"task_id": task_id, "skill": skill, "n": n, "mean": mean, "var": var, "min": 0.0 if mean < 1 else 1.0,
            "max": 1.0 if mean > 0 else 0.0, "phi": 4 * mean * (1 - mean), "zone": zone, "informative": var > 0,
            "selected": zone == "boundary", "rank": 0 if zone == "boundary" else None}


def _task(task_id: str, origin: str = "seed", skill: str = "base") -> dict:
    return {"id": task_id, "env": "builtin", "domain": "retail", "skill": skill, "origin": origin,
            "parent_id": None if origin == "seed" else "s1", "generation": 0 if origin == "seed" else 1,
            "user_turns": ["hi"], "initial_state": {}, "env_config": {}, "tools": [], "withheld": [], "reference": [[]]}


def _entry(task_id: str, origin: str, status: str, iteration: int, reason: str | None = None) -> dict:
    log = [{"iter": iteration, "action": "inject" if origin == "synthetic" else "seed", "reason": "test"}]
    entry = {**_task(task_id, origin), "status": status, "added_iter": iteration, "trainable_from": iteration + 1,
             "history": [], "log": log}
    if status == "retired":
        entry.update(retired_iter=iteration, retire_reason=reason)
    return entry


def _eval_file(path, iteration: int, successes: list[float], progress: list[float]) -> None:
    cfg = EvalOptions(iteration=iteration)
    tasks = []
    for i, (s, p) in enumerate(zip(successes, progress, strict=True)):
        episode = {"task_id": f"h{i}", "skill": "base" if i % 2 == 0 else "miss_param", "outcome": s, "progress": p,
                   "validity": 1.0, "calls": [], "finish_reason": "done", "turn_scores": [s]}
        tasks.append(task_record([episode], {"reference": [[{"name": "f", "arguments": {}}]]}, "ckpt", cfg))
    records.write_records(path, tasks + aggregate(tasks), "eval")


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "rods_run"
    (run / "setup").mkdir(parents=True)
    _eval_file(run / "setup" / "eval.parquet", 0, [0.0, 0.0, 1.0, 0.0], [0.0, 0.5, 1.0, 0.0])
    # iteration 0: 3 groups of 4, 2 informative; one candidate accepted of 4 attempted
    it0 = run / "iter_000"
    it0.mkdir()
    records.write_records(it0 / "groups.parquet", [_group("a", 0.5), _group("b", 0.0), _group("c", 0.25, skill="miss_param")], "group")
    records.write_records(it0 / "candidates.parquet", [_task("x1", "synthetic")], "task",
                          provenance_info={"synthesis": {"attempted": 4, "accepted": 1, "rejected": {"duplicate": 3}}})
    records.write_records(it0 / "buffer.parquet", [_entry("a", "seed", "active", 0), _entry("b", "seed", "active", 0),
                                                   _entry("c", "seed", "active", 0), _entry("x1", "synthetic", "pending", 0)], "buffer")
    records.write_records(it0 / "metrics.jsonl", [{"mode": "grpo", "step": 1, "updated": True, "loss": 0.1, "groups_total": 3,
                                                   "groups_kept": 2, "groups_dropped": 1, "tokens": 100, "time_s": 1.0}], "metrics")
    _eval_file(it0 / "eval.parquet", 1, [1.0, 0.0, 1.0, 0.0], [1.0, 0.5, 1.0, 0.5])
    # iteration 1: 2 groups of 4 (one mastered), the synthetic task active then one retired; no eval
    it1 = run / "iter_001"
    it1.mkdir()
    records.write_records(it1 / "groups.parquet", [_group("a", 1.0), _group("x1", 0.75)], "group")
    records.write_records(it1 / "candidates.parquet", [], "task")
    records.write_records(it1 / "buffer.parquet", [_entry("a", "seed", "active", 0), _entry("b", "seed", "active", 0),
                                                   _entry("c", "seed", "active", 0), _entry("x1", "synthetic", "active", 0),
                                                   _entry("x2", "synthetic", "retired", 1, "mastered")], "buffer")
    return run


def test_summary_numbers(run_dir):
    s = summarize_run(run_dir)
    it0, it1 = s["iterations"]
    assert it0["trajectories"] == 12 and it0["trajectories_total"] == 12
    assert it0["reward_mean"] == pytest.approx(0.25)  # (0.5 + 0 + 0.25) / 3, every group of 4
    assert it0["informative"] == pytest.approx(2 / 3)
    assert (it0["zone_hard"], it0["zone_boundary"], it0["zone_mastered"]) == (1, 2, 0)
    assert (it0["buffer_seed"], it0["buffer_synthetic"], it0["buffer_pending"], it0["retired"]) == (3, 0, 1, 0)
    assert it0["injected"] == 1
    assert it0["synth_accepted"] == 1 and it0["acceptance"] == pytest.approx(0.25)
    assert it0["loss"] == pytest.approx(0.1) and it0["groups_kept"] == 2
    assert it0["heldout_success"] == pytest.approx(0.5) and it0["heldout_progress"] == pytest.approx(0.75)
    assert it1["trajectories_total"] == 20
    assert it1["informative"] == pytest.approx(0.5)
    assert it1["zone_mastered"] == 1
    assert (it1["buffer_synthetic"], it1["retired"], it1["retired_mastered"]) == (1, 1, 1)
    assert it1["synth_accepted"] == 0 and it1["acceptance"] is None
    assert "heldout_success" not in it1
    # held-out points: the starting policy (0) and the policy after iteration 0 (1)
    assert [p["iteration"] for p in s["evals"]] == [0, 1]
    assert s["evals"][0]["success"] == pytest.approx(0.25)
    assert s["evals"][0]["progress"] == pytest.approx(0.375)
    assert s["evals"][1]["skills"]["base"]["success"] == pytest.approx(1.0)
    assert s["evals"][1]["skills"]["miss_param"]["progress"] == pytest.approx(0.5)
    # one call turn per task, passed where the task succeeded
    assert [(p["call_turns_passed"], p["call_turns"]) for p in s["evals"]] == [(1, 4), (2, 4)]
    from rich.console import Console

    text = Console(width=200, record=True, file=io.StringIO())
    for table in render_tables([s]):
        text.print(table)
    printed = text.export_text()
    assert "call turns" in printed and "2 / 4" in printed


def test_table_rows_are_the_printed_numbers(run_dir):
    rows = table_rows(summarize_run(run_dir))
    assert rows[0] == ["0", "12", "0.250", "67%", "1", "2", "0", "3", "0", "1", "0", "1", "25%", "0.500", "0.750"]
    assert rows[1][:4] == ["1", "20", "0.875", "50%"]
    assert rows[1][-2:] == ["-", "-"]


def test_report_writes_page_plots_and_summary(run_dir, tmp_path):
    out = tmp_path / "report"
    summaries, files = report([run_dir, run_dir], ReportOptions(out=str(out), names=["rods", "static"]))
    assert [s["name"] for s in summaries] == ["rods", "static"]
    assert not out.exists()  # the library writes nothing: the caller (the CLI) writes the files it returns
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    for name in ("index.html", "training.png", "heldout.png", "zones_buffer.png", "synthesis.png", "summary.json"):
        assert (out / name).stat().st_size > 1000 or name == "summary.json"
    page = (out / "index.html").read_text()
    assert "training.png" in page and "<td>67%</td>" in page
    assert (out / "training.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "summary.json").read_text())[0]["iterations"][0]["groups"] == 3


def test_report_cli_prints_the_table(run_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["report", str(run_dir), "--out", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "rods_run" in printed and "67%" in printed and "0.750" in printed
    assert (out / "index.html").exists() and not (out / "training.png").exists()


def test_report_on_a_missing_folder_is_a_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_partial_run_leaves_gaps(tmp_path):
    run = tmp_path / "partial"
    (run / "iter_000").mkdir(parents=True)
    records.write_records(run / "iter_000" / "groups.parquet", [_group("a", 0.5)], "group")
    (run / "iter_001").mkdir()  # started, nothing finished yet
    s = summarize_run(run)
    assert len(s["iterations"]) == 1 and s["evals"] == []
    assert table_rows(s)[0][5] == "1" and table_rows(s)[0][7] == "-"
