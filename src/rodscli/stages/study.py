"""`rods report STUDY --study`: arms x seeds of loop runs, as curves with 95% bands and the
paper's final table with RODS-minus-baseline differences and their 95% intervals.

A study folder is what `make study` writes (pipelines/study.mk):

    STUDY/ARM/seedS/     one `make loop` run per arm and seed (stages/report.py reads it)
    STUDY/times.tsv      arm, seed, seconds of each `make loop` call

Curves (informative fraction, batch reward, held-out progress and success) are the mean over
the seeds at each iteration with the Student t 95% interval of that mean (stats.t_interval).
The final table compares the arms at the last held-out evaluation that every run has reached
(the same trajectory budget for all): per arm the mean over seeds and held-out tasks, overall
and per skill type; per arm against the baseline (`static`) and against its own start, the
mean difference with its paired-bootstrap 95% interval over the common seeds and the held-out
tasks (stats.paired_bootstrap). A run still in progress (not yet at the study's last held-out
evaluation) is left out of the tables and named under them.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np

from rodscli import stats
from rodscli.errors import InputError
from rodscli.schemas import SKILLS
from rodscli.stages import study_diagnosis as diagnosis
from rodscli.stages.report import _fmt, _read, figures, notes_html, png_bytes, summarize_run

SEED_DIR = re.compile(r"^seed(\d+)$")
# the paper's order: the method, its baseline, then the ablations
ARM_ORDER = ("rods", "static", "random", "binary", "no-retire", "no-inject")
BASELINE = "static"
TRAINING_CURVES = (("informative", "informative groups (fraction)"), ("reward_mean", "batch reward (mean)"))
HELDOUT_CURVES = (("progress", "held-out progress"), ("success", "held-out success"))
METRICS = ("success", "progress")
COLUMNS = ("overall", *SKILLS)


def study_runs(study: str | Path) -> dict[str, dict[int, Path]]:
    """{arm: {seed: run folder}} of a study folder, arms in the paper's order then by name."""
    study = Path(study)
    if not study.is_dir():
        raise InputError("not a study folder (expected the STUDY folder of `make study`)", where=str(study))
    arms: dict[str, dict[int, Path]] = {}
    for arm in sorted(p for p in study.iterdir() if p.is_dir()):
        seeds = {int(m.group(1)): d for d in arm.iterdir() if d.is_dir() and (m := SEED_DIR.match(d.name))}
        if seeds:
            arms[arm.name] = dict(sorted(seeds.items()))
    if not arms:
        raise InputError("no ARM/seedS run folders in it (is it the STUDY folder of `make study`?)", where=str(study))
    order = {a: i for i, a in enumerate(ARM_ORDER)}
    return dict(sorted(arms.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def eval_path(run: Path, iteration: int) -> Path:
    """The eval file of the policy after `iteration` GRPO iterations (0 = the start)."""
    return run / "setup" / "eval.parquet" if iteration == 0 else run / f"iter_{iteration - 1:03d}" / "eval.parquet"


def task_scores(run: Path, iteration: int) -> dict[str, dict] | None:
    """{task id: the task's eval record} at `iteration`, or None when not evaluated (yet)."""
    found = _read(eval_path(run, iteration), "eval")
    if not found:
        return None
    return {r["task_id"]: r for r in found if r["kind"] == "task"}


def read_times(study: Path) -> dict[str, dict[int, float]]:
    """{arm: {seed: seconds}} summed over the `make loop` calls times.tsv recorded."""
    out: dict[str, dict[int, float]] = {}
    path = study / "times.tsv"
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split("\t")
        if len(parts) != 3:
            raise InputError("expected arm, seed and seconds separated by tabs", where=f"{path}:{n}", field="line")
        try:
            seed, seconds = int(parts[1]), float(parts[2])
        except ValueError:
            raise InputError(f"seed and seconds must be numbers, got {parts[1]!r} and {parts[2]!r}", where=f"{path}:{n}", field="seconds") from None
        out.setdefault(parts[0], {})[seed] = out.get(parts[0], {}).get(seed, 0.0) + seconds
    return out


def _band(xs_values: dict[int, list[float]]) -> list[dict[str, Any]]:
    points = []
    for x in sorted(xs_values):
        mean, lo, hi = stats.t_interval(xs_values[x])
        points.append({"x": x, "mean": mean, "low": lo, "high": hi, "n": len(xs_values[x])})
    return points


def curves(runs: dict[int, dict]) -> dict[str, list[dict]]:
    """Every curve of one arm as points {x, mean, low, high, n} across its seeds' run summaries."""
    out: dict[str, list[dict]] = {}
    for key, _ in TRAINING_CURVES:
        by_x: dict[int, list[float]] = {}
        for s in runs.values():
            for row in s["iterations"]:
                if row.get(key) is not None:
                    by_x.setdefault(row["iteration"], []).append(row[key])
        out[key] = _band(by_x)
    for key, _ in HELDOUT_CURVES:
        by_x = {}
        for s in runs.values():
            for p in s["evals"]:
                by_x.setdefault(p["iteration"], []).append(p[key])
        out[f"heldout_{key}"] = _band(by_x)
    return out


def score_matrix(runs: dict[int, Path], seeds: list[int], iteration: int, task_ids: list[str], metric: str) -> np.ndarray:
    """[seeds x tasks] per-task `metric` at `iteration`, rows in `seeds` order, columns in `task_ids` order."""
    rows = []
    for seed in seeds:
        scores = task_scores(runs[seed], iteration)
        if scores is None:
            raise InputError(f"no held-out eval after iteration {iteration}", where=str(eval_path(runs[seed], iteration)))
        missing = [t for t in task_ids if t not in scores]
        if missing:
            raise InputError(f"held-out task {missing[0]!r} is not in this eval: the runs were evaluated on different tasks",
                             where=str(eval_path(runs[seed], iteration)), field="task_id")
        rows.append([float(scores[t][metric]) for t in task_ids])
    return np.array(rows)


def _columns(task_skill: dict[str, str]) -> dict[str, list[str]]:
    """Held-out task ids of every table column: all of them, then each skill type present."""
    ids = sorted(task_skill)
    cols = {"overall": ids}
    for skill in SKILLS:
        mine = [t for t in ids if task_skill[t] == skill]
        if mine:
            cols[skill] = mine
    return cols


def final_table(arms: dict[str, dict[int, Path]], iteration: int, n_boot: int, seed: int = 0) -> dict[str, Any]:
    """Per arm: the mean of each metric per column at `iteration`; per arm against the baseline
    and against its start: the mean difference and its paired-bootstrap 95% interval."""
    first = next(iter(next(iter(arms.values())).values()))
    scores = task_scores(first, iteration) or {}
    task_skill = {t: r["skill"] for t, r in scores.items()}
    cols = _columns(task_skill)
    table: dict[str, Any] = {"iteration": iteration, "n_tasks": len(task_skill), "columns": list(cols), "arms": {},
                             "vs_baseline": {}, "vs_start": {}, "baseline": BASELINE if BASELINE in arms else None}
    matrices: dict[tuple[str, str, str], np.ndarray] = {}
    for arm, runs in arms.items():
        seeds = sorted(runs)
        row: dict[str, Any] = {"seeds": seeds}
        for metric in METRICS:
            for col, ids in cols.items():
                m = matrices[(arm, metric, col)] = score_matrix(runs, seeds, iteration, ids, metric)
                row[f"{metric}/{col}"] = float(m.mean())
        table["arms"][arm] = row
        start = {}
        for metric in METRICS:
            for col, ids in cols.items():
                before = score_matrix(runs, seeds, 0, ids, metric)
                start[f"{metric}/{col}"] = _diff(matrices[(arm, metric, col)], before, seeds, n_boot, seed)
        table["vs_start"][arm] = start
    base = table["baseline"]
    if base is not None:
        for arm, runs in arms.items():
            if arm == base:
                continue
            common = sorted(set(runs) & set(arms[base]))
            if not common:
                continue
            diffs = {}
            for metric in METRICS:
                for col, ids in cols.items():
                    a = score_matrix(runs, common, iteration, ids, metric)
                    b = score_matrix(arms[base], common, iteration, ids, metric)
                    diffs[f"{metric}/{col}"] = _diff(a, b, common, n_boot, seed)
            table["vs_baseline"][arm] = diffs
    return table


def _diff(a: np.ndarray, b: np.ndarray, seeds: list[int], n_boot: int, seed: int) -> dict[str, Any]:
    mean, lo, hi = stats.paired_bootstrap(a, b, n_boot=n_boot, seed=seed)
    return {"diff": mean, "low": lo, "high": hi, "seeds": seeds, "excludes_zero": lo > 0 or hi < 0}


def budget_to_match(curves_by_arm: dict[str, dict], baseline: str) -> dict[str, Any]:
    """Per arm, the trajectories at which its mean held-out progress first reaches the baseline's
    final mean, as a fraction of the baseline's trajectories (the issue's "60% of the budget")."""
    base = curves_by_arm.get(baseline, {}).get("heldout_progress") or []
    if not base:
        return {}
    target, last_x = base[-1]["mean"], base[-1]["x"]
    out = {}
    for arm, c in curves_by_arm.items():
        reached = next((p["x"] for p in c.get("heldout_progress", []) if p["mean"] is not None and p["mean"] >= target), None)
        out[arm] = {"target": target, "iteration": reached, "fraction": None if reached is None or not last_x else reached / last_x}
    return out


def summarize_study(study: str | Path, n_boot: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """The whole study as plain data (what study.json holds)."""
    study = Path(study)
    arms = study_runs(study)
    summaries = {a: {s: summarize_run(run, f"{a}/seed{s}") for s, run in runs.items()} for a, runs in arms.items()}
    arms, summaries, pending, iteration = _started(study, arms, summaries)
    curves_by_arm = {a: curves(runs) for a, runs in summaries.items()}
    times = read_times(study)
    return {
        "path": str(study),
        "arms": {a: {"seeds": sorted(runs), "trajectories": _trajectories(summaries[a], iteration)} for a, runs in arms.items()},
        "curves": curves_by_arm,
        "final": final_table(arms, iteration, n_boot, seed),
        "budget_to_match": budget_to_match(curves_by_arm, BASELINE),
        "times": {a: {str(s): t for s, t in v.items()} for a, v in times.items()},
        "time_total_s": sum(t for v in times.values() for t in v.values()),
        "pending": pending,
        "diagnosis": {"heldout": diagnosis.heldout_changes(arms, iteration, task_scores),
                      "groups": diagnosis.training_groups(arms, iteration),
                      "batches": diagnosis.batches_against(summaries, iteration, BASELINE)},
    }


def _started(study: Path, arms: dict[str, dict[int, Path]], summaries: dict[str, dict[int, dict]]):
    """Leave out the runs of a running study that have not reached its last held-out evaluation
    (the latest any run has: every arm spends the same budget), so that one run still at its
    start does not pull the comparison back to iteration 0. Returns the arms and summaries left,
    the runs left out ("arm/seedS") and that last evaluation (the one every run left has)."""
    reached = {(a, s): {p["iteration"] for p in summaries[a][s]["evals"]} for a, runs in arms.items() for s in runs}
    if not any(reached.values()):
        raise InputError("no run of the study has a held-out eval yet (not even the start's): nothing to report",
                         where=str(study))
    last = max(max(its) for its in reached.values() if its)
    pending = [f"{a}/seed{s}" for (a, s), its in reached.items() if last not in its]
    kept = {a: {s: r for s, r in runs.items() if last in reached[(a, s)]} for a, runs in arms.items()}
    kept = {a: runs for a, runs in kept.items() if runs}
    return kept, {a: {s: summaries[a][s] for s in runs} for a, runs in kept.items()}, pending, last


def _trajectories(runs: dict[int, dict], iteration: int) -> int | None:
    """Trajectories one run of the arm had consumed at the compared evaluation (the first seed's)."""
    for s in runs.values():
        for p in s["evals"]:
            if p["iteration"] == iteration:
                return p.get("trajectories_total")
    return None


# ---------------------------------------------------------------------------------------
# tables, plots, page


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _signed(d: dict) -> str:
    mark = "*" if d["excludes_zero"] else ""
    return f"{100 * d['diff']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]{mark}"


def table_cells(summary: dict, metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings) of the final table of one metric, in percent, the differences
    against the baseline and the start under each arm (what the tests and the page read)."""
    final = summary["final"]
    header = ["arm", "seeds", *final["columns"]]
    rows = []
    for arm, row in final["arms"].items():
        rows.append([arm, str(len(row["seeds"])), *[_pct(row[f"{metric}/{c}"]) for c in final["columns"]]])
        vs = final["vs_baseline"].get(arm)
        if vs:
            rows.append([f"  {arm} - {final['baseline']}", str(len(next(iter(vs.values()))["seeds"])),
                         *[_signed(vs[f"{metric}/{c}"]) for c in final["columns"]]])
        start = final["vs_start"][arm]
        rows.append([f"  {arm} - start", str(len(row["seeds"])), *[_signed(start[f"{metric}/{c}"]) for c in final["columns"]]])
    return header, rows


def render_tables(summary: dict) -> list[Any]:
    from rich.table import Table

    final = summary["final"]
    tables = []
    for metric in METRICS:
        header, rows = table_cells(summary, metric)
        t = Table(title=f"held-out {metric} x 100 after {final['iteration']} GRPO iterations ({final['n_tasks']} tasks); "
                        "differences: mean [95% paired bootstrap], * = excludes 0", title_justify="left")
        for h in header:
            t.add_column(h, justify="left" if h == "arm" else "right")
        for cells in rows:
            t.add_row(*cells)
        if summary.get("pending"):
            t.caption = "left out, not yet at the last held-out eval: " + ", ".join(summary["pending"])
        tables.append(t)
    if summary.get("diagnosis"):
        tables += diagnosis.render(summary["diagnosis"])
    return tables


def plot_study(summary: dict) -> list[tuple[str, str, bytes]]:
    """training.png and heldout.png: each arm's mean curve and its 95% band across seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for name, keys, xlabel in (("training.png", [(k, f"{t}") for k, t in TRAINING_CURVES], "iteration"),
                               ("heldout.png", [(f"heldout_{k}", t) for k, t in HELDOUT_CURVES], "GRPO iterations done")):
        fig, axes = plt.subplots(1, len(keys), figsize=(11, 4))
        for ax, (key, title) in zip(axes, keys, strict=True):
            for arm, c in summary["curves"].items():
                pts = [p for p in c.get(key, []) if p["mean"] is not None]
                if not pts:
                    continue
                xs = [p["x"] for p in pts]
                line, = ax.plot(xs, [p["mean"] for p in pts], marker="o", label=arm)
                band = [(p["x"], p["low"], p["high"]) for p in pts if p["low"] is not None]
                if band:
                    ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band], color=line.get_color(), alpha=0.15)
            ax.set(title=f"{title}: mean, 95% band over seeds", xlabel=xlabel, ylim=(-0.02, 1.02))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        made.append((name, f"{name[:-4]}: the mean over seeds of each arm and its Student t 95% interval", png_bytes(plt, fig)))
    return made


def _html_table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """An <h2> title and a table of strings, escaped."""
    return [f"<h2>{html.escape(title)}</h2><table><tr>", *[f"<th>{html.escape(h)}</th>" for h in header], "</tr>",
            *["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in rows], "</table>"]


def html_page(summary: dict, pngs: list[tuple[str, str, bytes]]) -> bytes:
    """index.html of a study report, showing the PNGs by name."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>rods study</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}</style></head><body>",
             f"<h1>rods study: {html.escape(summary['path'])}</h1><ul>"]
    for arm, a in summary["arms"].items():
        secs = sum((summary["times"].get(arm) or {}).values())
        parts.append(f"<li><b>{html.escape(arm)}</b>: seeds {html.escape(', '.join(map(str, a['seeds'])))}; "
                     f"time {_fmt(secs / 3600 if secs else None)} h</li>")
    parts.append("</ul>")
    for metric in METRICS:
        parts += _html_table(f"held-out {metric} x 100 after {summary['final']['iteration']} GRPO iterations",
                             *table_cells(summary, metric))
    parts.append("<p>Differences: mean over the common seeds and the held-out tasks, with the 2.5-97.5 percentiles of "
                 "the paired bootstrap (seeds and tasks resampled, pairs kept); * marks an interval that excludes 0.</p>")
    if summary.get("diagnosis"):
        parts += _html_table("held-out tasks changed against the start", *diagnosis.change_rows(summary["diagnosis"]))
        parts += _html_table("training groups", *diagnosis.group_rows(summary["diagnosis"]))
        parts += notes_html(diagnosis.batch_warnings(summary["diagnosis"].get("batches", {})))
    parts += figures(pngs)
    parts.append("</body></html>")
    return "\n".join(parts).encode()


def report_study(study: str | Path, plots: bool = True, n_boot: int = 10_000) -> tuple[dict, dict[str, bytes]]:
    """Summarize a study; returns the summary and the report's files (index.html, the PNGs,
    study.json) as {file name: bytes}, for the caller to write."""
    import orjson

    summary = summarize_study(study, n_boot)
    pngs = plot_study(summary) if plots else []
    files = {name: data for name, _, data in pngs}
    files["index.html"] = html_page(summary, pngs)
    files["study.json"] = orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    return summary, files
