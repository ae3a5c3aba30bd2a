"""`rods report`: what happened in one or more loop runs, as a table, PNG plots and an HTML page.

A run folder is what `make loop` writes (pipelines/loop.mk):

    RUN/setup/eval.parquet          held-out eval of the starting policy (iteration 0)
    RUN/iter_NNN/groups.parquet     per-task reward statistics of iteration NNN (rods detect)
    RUN/iter_NNN/candidates.parquet synthesized tasks (rods synthesize)
    RUN/iter_NNN/buffer.parquet     the replay buffer after the iteration (rods merge-buffer)
    RUN/iter_NNN/metrics.jsonl      what the GRPO update did (rods train-step)
    RUN/iter_NNN/eval.parquet       held-out eval of the policy after the iteration

Every file is optional: a missing one leaves a gap (a run still in progress, or a pipeline
that switches a stage off), never an error. Held-out points are indexed by the number of
GRPO iterations the evaluated policy had (0 = the starting policy), so that `iter_000/eval`
is point 1.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rodscli import records
from rodscli.config import option
from rodscli.errors import InputError, OptionError
from rodscli.stages.eval import call_turns_text

ITER_DIR = re.compile(r"^iter_(\d+)$")
RETIRE_REASONS = ("mastered", "unsolvable", "stale", "capacity")
ZONES = ("hard", "boundary", "mastered")
# the fields the run summary reads (groups and buffer entries carry whole rollouts and logs)
GROUP_FIELDS = ["task_id", "n", "zone", "mean", "informative", "selected"]
BUFFER_FIELDS = ["status", "origin", "retire_reason", "log"]


@dataclass
class ReportOptions:
    out: str = option("report", help="Folder for index.html, the PNG plots and summary.json.")
    names: list[str] = option([], help="Label of each run in plots and tables (default: the run folder's name). Repeat once per run.")
    plots: bool = option(True, help="Draw the PNG plots (matplotlib); --no-plots writes only the table and summary.json.")
    study: bool = option(False, help="The folder is a study (`make study`: STUDY/ARM/seedS runs): curves with 95% bands across seeds and the final held-out table with differences and paired-bootstrap intervals (stages/study.py); writes study.json.")
    n_boot: int = option(10_000, help="Bootstrap resamples of each interval (--study).")

    def check(self) -> None:
        if self.study and self.n_boot < 100:
            raise OptionError(f"--n-boot must be at least 100, got {self.n_boot}", field="--n-boot")


# ---------------------------------------------------------------------------------------
# reading a run


def _read(path: Path, schema: str, columns: list[str] | None = None) -> list[dict] | None:
    """All records of a file (of a Parquet file only `columns`, when given), or None when it
    does not exist (yet). Loop outputs are trusted: they were validated when written, so they
    are not validated again here."""
    if not path.exists():
        return None
    return records.read_all(path, schema, validate=False, columns=columns)


def iteration_dirs(run: Path) -> list[tuple[int, Path]]:
    """(iteration number, folder) of every iter_NNN folder of a run, in order."""
    found = []
    for child in run.iterdir():
        m = ITER_DIR.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child))
    return sorted(found)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def group_stats(groups: list[dict]) -> dict[str, Any]:
    """Trajectories, training reward, informative fraction and zone counts of one iteration."""
    n = sum(g["n"] for g in groups)
    zones = Counter(g["zone"] for g in groups)
    return {
        "groups": len(groups),
        "trajectories": n,
        # rollout-weighted mean reward: the mean training reward of the batch
        "reward_mean": sum(g["mean"] * g["n"] for g in groups) / n if n else None,
        "informative": sum(bool(g["informative"]) for g in groups) / len(groups) if groups else None,
        "selected": sum(bool(g.get("selected")) for g in groups),
        **{f"zone_{z}": zones.get(z, 0) for z in ZONES},
        # which tasks were rolled out (a fingerprint): two runs with the same batch fingerprints
        # and seed ran the same computation (every stage is deterministic given inputs and seed)
        "batch": hashlib.sha1("\n".join(sorted(g["task_id"] for g in groups)).encode()).hexdigest()[:12],
    }


def buffer_stats(buffer: list[dict], iteration: int) -> dict[str, Any]:
    """Buffer composition after an iteration: active seeds / synthetic, pending, retired by reason."""
    out: dict[str, Any] = {"buffer_seed": 0, "buffer_synthetic": 0, "buffer_pending": 0, "retired": 0}
    out.update({f"retired_{r}": 0 for r in RETIRE_REASONS})
    injected = 0
    for entry in buffer:
        status = entry["status"]
        if status == "active":
            out["buffer_seed" if entry.get("origin") == "seed" else "buffer_synthetic"] += 1
        elif status == "pending":
            out["buffer_pending"] += 1
        else:
            out["retired"] += 1
            reason = entry.get("retire_reason")
            if reason in RETIRE_REASONS:
                out[f"retired_{reason}"] += 1
        injected += sum(1 for e in entry.get("log") or [] if e["action"] == "inject" and e["iter"] == iteration)
    out["injected"] = injected
    return out


def synthesis_stats(candidates: list[dict], path: Path) -> dict[str, Any]:
    """Accepted candidates, and the acceptance rate when the synthesizer recorded its attempts.

    `rods synthesize` writes its counts into the file's provenance (`synthesis`: attempted,
    accepted, rejected by reason); without them only the accepted count is known.
    """
    accepted = len(candidates)
    prov = records.read_provenance(path) or {}
    stats = prov.get("synthesis") or {}
    attempted = stats.get("attempted")
    if attempted is None and isinstance(stats.get("rejected"), dict):
        attempted = accepted + sum(stats["rejected"].values())
    return {
        "synth_accepted": accepted,
        "synth_attempted": attempted,
        "acceptance": accepted / attempted if attempted else None,
        "rejected": dict(stats.get("rejected") or {}),
    }


def eval_point(evals: list[dict], default_iteration: int) -> dict[str, Any]:
    """The overall and per-skill held-out numbers of one eval file."""
    overall = next((e for e in evals if e["kind"] == "all"), None)
    tasks = [e for e in evals if e["kind"] == "task"]
    if overall is None and not tasks:
        return {}
    if overall is None:  # a file with task records only: aggregate them here
        from rodscli.stages.eval import aggregate

        overall = next(e for e in aggregate(tasks) if e["kind"] == "all")
    iteration = overall.get("iteration")
    return {
        "iteration": default_iteration if iteration is None else iteration,
        "success": overall["success"],
        "progress": overall["progress"],
        "n_tasks": overall["n_tasks"],
        "call_turns": overall.get("call_turns"),
        "call_turns_passed": overall.get("call_turns_passed"),
        "skills": {e["key"]: {"success": e["success"], "progress": e["progress"], "n_tasks": e["n_tasks"]} for e in evals if e["kind"] == "skill"},
    }


def _metrics(folder: Path) -> dict | None:
    for path in (folder / "metrics.jsonl", folder / "policy" / "metrics.jsonl", folder / "policy" / "metrics.json"):
        found = _read(path, "metrics")
        if found:
            return found[-1]
    return None


def summarize_run(run: str | Path, name: str | None = None) -> dict[str, Any]:
    """One run as plain data: a row per iteration and a held-out point per evaluated policy."""
    run = Path(run)
    if not run.is_dir():
        raise InputError("not a run folder (expected the RUN folder of `make loop`)", where=str(run))
    rows, evals = [], []
    start = _read(run / "setup" / "eval.parquet", "eval")
    if start:
        evals.append(eval_point(start, 0))
    consumed = 0
    for n, folder in iteration_dirs(run):
        row: dict[str, Any] = {"iteration": n}
        groups = _read(folder / "groups.parquet", "group", GROUP_FIELDS)
        if groups is not None:
            row.update(group_stats(groups))
            consumed += row["trajectories"]
            row["trajectories_total"] = consumed
        buffer = _read(folder / "buffer.parquet", "buffer", BUFFER_FIELDS)
        if buffer is not None:
            row.update(buffer_stats(buffer, n))
        cand_path = folder / "candidates.parquet"
        candidates = _read(cand_path, "task", ["id"])
        if candidates is not None:
            row.update(synthesis_stats(candidates, cand_path))
        metrics = _metrics(folder)
        if metrics is not None:
            row.update({"loss": metrics.get("loss"), "updated": metrics.get("updated"), "groups_kept": metrics.get("groups_kept"), "train_time_s": metrics.get("time_s")})
            if row.get("reward_mean") is None:
                row["reward_mean"] = metrics.get("reward_mean")
        ev = _read(folder / "eval.parquet", "eval")
        if ev:
            point = eval_point(ev, n + 1)
            point["trajectories_total"] = consumed
            evals.append(point)
            row["heldout_success"], row["heldout_progress"] = point["success"], point["progress"]
        if len(row) > 1:
            rows.append(row)
    if evals and evals[0]["iteration"] == 0:
        evals[0]["trajectories_total"] = 0
    return {"name": name or run.name, "path": str(run), "iterations": rows, "evals": evals}


def batch_differences(a: dict, b: dict, before: int | None = None) -> tuple[int, list[int]]:
    """Of two run summaries: how many iterations (below `before`, when given) both rolled out,
    and those among them whose batches differ."""
    def batches(s: dict) -> dict[int, str]:
        return {r["iteration"]: r["batch"] for r in s["iterations"] if r.get("batch") and (before is None or r["iteration"] < before)}
    mine, theirs = batches(a), batches(b)
    common = sorted(mine.keys() & theirs.keys())
    return len(common), [n for n in common if mine[n] != theirs[n]]


def repeated_runs(summaries: list[dict]) -> list[str]:
    """A line for each pair of runs that rolled out the same tasks at every iteration both ran."""
    lines = []
    for i, a in enumerate(summaries):
        for b in summaries[i + 1:]:
            compared, different = batch_differences(a, b)
            if compared and not different:
                lines.append(f"{a['name']} and {b['name']} rolled out the same tasks at all {compared} iterations both ran: "
                             "with the same seed they are the same computation, step for step, and any difference "
                             "between them is 0 by construction (synthesized tasks never reached a batch)")
    return lines


# ---------------------------------------------------------------------------------------
# table


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.0f}%"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


TABLE_COLUMNS = [
    ("iter", "iteration", ""),
    ("traj", "trajectories_total", ""),
    ("reward", "reward_mean", ""),
    ("inform.", "informative", "pct"),
    ("hard", "zone_hard", ""),
    ("bound.", "zone_boundary", ""),
    ("mast.", "zone_mastered", ""),
    ("seeds", "buffer_seed", ""),
    ("synth", "buffer_synthetic", ""),
    ("pend.", "buffer_pending", ""),
    ("retired", "retired", ""),
    ("accepted", "synth_accepted", ""),
    ("accept%", "acceptance", "pct"),
    ("held succ", "heldout_success", ""),
    ("held prog", "heldout_progress", ""),
]


def table_rows(summary: dict) -> list[list[str]]:
    """The printed table of one run as strings (what the tests read)."""
    return [[_fmt(row.get(key), kind) for _, key, kind in TABLE_COLUMNS] for row in summary["iterations"]]


def render_tables(summaries: list[dict]) -> list[Any]:
    from rich.table import Table

    tables = []
    for s in summaries:
        t = Table(title=f"{s['name']}  ({s['path']})", title_justify="left")
        for header, _, _ in TABLE_COLUMNS:
            t.add_column(header, justify="right")
        for cells in table_rows(s):
            t.add_row(*cells)
        tables.append(t)
        if s["evals"]:
            e = Table(title=f"{s['name']}: held-out success / progress by GRPO iterations done", title_justify="left")
            skills = sorted({k for p in s["evals"] for k in p["skills"]})
            for header in ["after iter", "traj", "success", "progress", "call turns", *skills]:
                e.add_column(header, justify="right")
            for p in s["evals"]:
                per_skill = [_fmt(p["skills"][k]["success"]) + " / " + _fmt(p["skills"][k]["progress"]) if k in p["skills"] else "-" for k in skills]
                e.add_row(str(p["iteration"]), _fmt(p.get("trajectories_total")), _fmt(p["success"]), _fmt(p["progress"]),
                          call_turns_text(p), *per_skill)
            tables.append(e)
    return tables + repeated_runs(summaries)


# ---------------------------------------------------------------------------------------
# plots and page


def _series(summary: dict, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in summary["iterations"]:
        if row.get(key) is not None:
            xs.append(row["iteration"])
            ys.append(row[key])
    return xs, ys


def plot(summaries: list[dict]) -> list[tuple[str, str, bytes]]:
    """Draw the PNGs; returns (file name, caption, PNG bytes) of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    made: list[tuple[str, str, bytes]] = []
    for draw in (_training_plot, _heldout_plot, _zones_buffer_plot, _synthesis_plot):
        drawn = draw(plt, summaries)
        if drawn is None:  # nothing of this kind in any run
            continue
        fig, name, caption = drawn
        for ax in fig.axes:  # iterations are whole numbers
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        made.append((name, caption, png_bytes(plt, fig)))
    return made


def png_bytes(plt: Any, fig: Any) -> bytes:
    """The figure as PNG bytes (laid out, then closed)."""
    import io

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _grid_and_legend(ax: Any, **legend: Any) -> None:
    ax.grid(alpha=0.3)
    ax.legend(**legend)


def _training_plot(plt: Any, summaries: list[dict]) -> tuple[Any, str, str]:
    """Informative fraction and training reward, the runs overlaid."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s in summaries:
        xs, ys = _series(s, "informative")
        axes[0].plot(xs, ys, marker="o", label=s["name"])
        xs, ys = _series(s, "reward_mean")
        axes[1].plot(xs, ys, marker="o", label=s["name"])
    axes[0].set(title="Informative groups (non-zero reward variance)", xlabel="iteration", ylabel="fraction of groups", ylim=(-0.02, 1.02))
    axes[1].set(title="Training reward (batch mean)", xlabel="iteration", ylabel="mean reward", ylim=(-0.02, 1.02))
    for ax in axes:
        _grid_and_legend(ax)
    return fig, "training.png", "Fraction of informative groups and mean training reward per iteration."


def _heldout_plot(plt: Any, summaries: list[dict]) -> tuple[Any, str, str] | None:
    """Held-out success and progress, the runs overlaid (None when no run was evaluated)."""
    if not any(s["evals"] for s in summaries):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s in summaries:
        xs = [p["iteration"] for p in s["evals"]]
        axes[0].plot(xs, [p["success"] for p in s["evals"]], marker="o", label=s["name"])
        axes[1].plot(xs, [p["progress"] for p in s["evals"]], marker="o", label=s["name"])
    axes[0].set(title="Held-out success (pass@k of outcome)", xlabel="GRPO iterations done", ylabel="success")
    axes[1].set(title="Held-out progress reward", xlabel="GRPO iterations done", ylabel="progress")
    for ax in axes:
        ax.set_ylim(-0.02, 1.02)
        _grid_and_legend(ax)
    return fig, "heldout.png", "Held-out success and progress of the policy after each evaluated iteration (0 = the starting policy)."


def _zones_buffer_plot(plt: Any, summaries: list[dict]) -> tuple[Any, str, str]:
    """Zones of the batch's groups (stacked bars) over buffer composition, one column per run."""
    cols = len(summaries)
    fig, axes = plt.subplots(2, cols, figsize=(5.5 * cols, 7), squeeze=False)
    for j, s in enumerate(summaries):
        ax = axes[0][j]
        xs = [r["iteration"] for r in s["iterations"]]
        bottom = [0] * len(xs)
        for zone, colour in zip(ZONES, ("#c0392b", "#f39c12", "#27ae60"), strict=True):
            ys = [r.get(f"zone_{zone}", 0) or 0 for r in s["iterations"]]
            ax.bar(xs, ys, bottom=bottom, color=colour, label=zone)
            bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
        ax.set(title=f"{s['name']}: zones of the batch's groups", xlabel="iteration", ylabel="groups")
        ax.legend(fontsize=8)
        ax = axes[1][j]
        for key, label in (("buffer_seed", "active seeds"), ("buffer_synthetic", "active synthetic"), ("buffer_pending", "pending"), ("retired", "retired (all reasons)")):
            xs2, ys2 = _series(s, key)
            if xs2:
                ax.plot(xs2, ys2, marker=".", label=label)
        ax.set(title=f"{s['name']}: buffer composition", xlabel="iteration", ylabel="tasks")
        _grid_and_legend(ax, fontsize=8)
    return fig, "zones_buffer.png", "Zone counts of each iteration's groups, and the replay buffer's composition after each iteration."


def _synthesis_plot(plt: Any, summaries: list[dict]) -> tuple[Any, str, str] | None:
    """Candidates attempted and accepted per iteration (None when no run synthesized)."""
    if not any(r.get("synth_accepted") for s in summaries for r in s["iterations"]):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for s in summaries:
        xs, ys = _series(s, "synth_accepted")
        ax.plot(xs, ys, marker="o", label=f"{s['name']}: accepted")
        xs, ys = _series(s, "synth_attempted")
        if xs:
            ax.plot(xs, ys, linestyle="--", marker=".", label=f"{s['name']}: attempted")
    ax.set(title="Synthesized candidates per iteration", xlabel="iteration", ylabel="tasks")
    _grid_and_legend(ax, fontsize=8)
    return fig, "synthesis.png", "Candidates the synthesizer attempted and accepted per iteration."


def _html_table(summary: dict) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _, _ in TABLE_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in table_rows(summary))
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(summaries: list[dict], pngs: list[tuple[str, str, bytes]]) -> bytes:
    """index.html of a report over runs, showing the PNGs by name."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>rods report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}</style></head><body>",
        "<h1>rods report</h1><ul>",
    ]
    for s in summaries:
        parts.append(f"<li><b>{html.escape(s['name'])}</b>: {html.escape(s['path'])}, {len(s['iterations'])} iterations</li>")
    parts.append("</ul>")
    parts += figures(pngs)
    for s in summaries:
        parts.append(f"<h2>{html.escape(s['name'])}</h2>{_html_table(s)}")
    parts += notes_html(repeated_runs(summaries))
    parts.append("<p>Columns: traj = trajectories consumed so far; inform. = groups with non-zero reward variance; "
                 "hard/bound./mast. = zone counts; seeds/synth/pend./retired = buffer after the iteration; "
                 "accepted = synthesized candidates; held succ/prog = held-out eval of the policy after the iteration.</p>")
    parts.append("</body></html>")
    return "\n".join(parts).encode()


def notes_html(lines: list[str]) -> list[str]:
    """Warnings under a report's tables, as bold paragraphs of the page."""
    return [f"<p><b>{html.escape(line)}</b></p>" for line in lines]


def figures(pngs: list[tuple[str, str, bytes]]) -> list[str]:
    """<figure> elements showing the PNGs by file name."""
    return [f"<figure><img src='{html.escape(name)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
            for name, caption, _ in pngs]


def report(runs: list[str | Path], cfg: ReportOptions) -> tuple[list[dict], dict[str, bytes]]:
    """Summarize every run; returns the summaries and the report's files (index.html, the PNGs,
    summary.json) as {file name: bytes}, for the caller to write into cfg.out."""
    import orjson

    names = list(cfg.names) + [None] * (len(runs) - len(cfg.names))
    summaries = [summarize_run(run, name) for run, name in zip(runs, names, strict=False)]
    pngs = plot(summaries) if cfg.plots else []
    files = {name: data for name, _, data in pngs}
    files["index.html"] = html_page(summaries, pngs)
    files["summary.json"] = orjson.dumps(summaries, option=orjson.OPT_INDENT_2)
    return summaries, files
