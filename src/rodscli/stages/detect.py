"""`rods detect`: scored rollouts -> per-task group statistics, zones and the boundary
selection (docs/architecture.md section 5). It costs no inference: it only reads rewards.

Per group of G rollouts: n, mean r-bar, population variance, min, max, and
phi = 4 r-bar (1 - r-bar), the Popoviciu (Bhatia-Davis) bound of the variance of a [0, 1]
reward; GRPO's gradient vanishes on zero-variance groups and is largest where phi is.
Zones: hard (r-bar < alpha_low), boundary (alpha_low <= r-bar <= alpha_high), mastered.
The group-by is one vectorized polars query; from Parquet it scans only the seven columns
it needs (never the token arrays).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from rich import box
from rich.table import Table

from rodscli import records
from rodscli.config import option
from rodscli.errors import InputError, OptionError, ValidationError
from rodscli.schemas import SKILLS, skill_order

COLUMNS = {
    "task_id": pl.String, "group_id": pl.String, "reward": pl.Float64, "skill": pl.String,
    "domain": pl.String, "origin": pl.String, "iteration": pl.Int64,
}
REQUIRED = ("task_id", "reward", "skill")
ZONES = ("hard", "boundary", "mastered")
SELECTIONS = ("phi", "random")
# phi values equal up to float rounding (means 0.4 and 0.6) must tie, so ranking compares rounded phi
_PHI_DIGITS = 12


@dataclass
class DetectConfig:
    """Options of `rods detect`."""

    alpha_low: float = option(0.20, help="Zone threshold alpha_low: mean reward below it is 'hard'.")
    alpha_high: float = option(0.85, help="Zone threshold alpha_high: mean reward above it is 'mastered'; between the two (inclusive) is 'boundary'.")
    top_m: int = option(32, help="Select at most M boundary groups (highest phi first) as synthesis seeds.")
    quota_per_skill: int | None = option(None, help="At most this many selected groups per skill type; default: an even split, ceil(M / number of skills with boundary groups).")
    refill: bool = option(True, help="Give slots that a skill cannot fill (fewer boundary groups than its quota) to the next best groups of other skills; --no-refill keeps the quota a hard cap.")
    by: str = option("task_id", help="Group rollouts by task_id (default) or group_id.")
    ema: float = option(0.5, help="History weight of the moving average with --previous: ema_mean = ema*previous ema_mean + (1-ema)*mean.")
    select: str = option("phi", help="How synthesis seeds are chosen: phi (the top-M boundary groups, RODS) or random (M groups drawn uniformly from all groups, whatever their zone, with the global --seed: the paper's random-selection ablation).")
    seed: int = option(0, help="Seed of --select random.")

    def check(self) -> None:
        if not 0.0 <= self.alpha_low <= self.alpha_high <= 1.0:
            raise OptionError(f"need 0 <= --alpha-low <= --alpha-high <= 1, got {self.alpha_low} and {self.alpha_high}")
        if self.top_m < 0 or (self.quota_per_skill is not None and self.quota_per_skill < 0):
            raise OptionError("--top-m and --quota-per-skill must be >= 0")
        if self.by not in ("task_id", "group_id"):
            raise OptionError(f"--by must be task_id or group_id, got {self.by!r}")
        if not 0.0 <= self.ema <= 1.0:
            raise OptionError(f"--ema must be in [0, 1], got {self.ema}")
        if self.select not in SELECTIONS:
            raise OptionError(f"--select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")


# ---------------------------------------------------------------------------------------
# input


def _with_columns(lf: pl.LazyFrame, present: Sequence[str], where: str) -> pl.LazyFrame:
    """The seven detect columns, typed; optional ones missing from the input become null."""
    missing = [c for c in REQUIRED if c not in present]
    if missing:
        raise InputError(f"scored rollouts lack column(s) {', '.join(missing)}", where=where)
    return lf.select([
        (pl.col(c) if c in present else pl.lit(None)).cast(t).alias(c) for c, t in COLUMNS.items()
    ])


def scan_scored(path: str, validate: bool = True) -> pl.LazyFrame:
    """A lazy frame of the detect columns of a scored file. Parquet is scanned (column
    pruning, streaming); JSONL is read through `records` (validated record by record)."""
    if records.file_format(path) == "parquet":
        if not os.path.isfile(path):
            raise InputError("no such file", where=path)
        lf = pl.scan_parquet(path)
        try:
            names = lf.collect_schema().names()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputError(f"not a readable Parquet file ({exc})", where=path) from None
        lf = _with_columns(lf, names, path)
        if validate:
            _check_columns(lf, path)
        return lf
    return frame_of(records.read_records(path, "scored", validate))


def frame_of(rows: Iterable[dict]) -> pl.LazyFrame:
    """The detect columns of in-memory scored records."""
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for r in rows:
        for c, values in cols.items():
            values.append(r.get(c))
    return pl.DataFrame(cols, schema=COLUMNS).lazy()


def _check_columns(lf: pl.LazyFrame, path: str) -> None:
    """The column-level share of schema validation for a scanned file: no missing task id,
    reward or skill, finite rewards, known skills. Names the first bad row."""
    bad = (
        pl.col("task_id").is_null() | pl.col("reward").is_null() | pl.col("reward").is_nan()
        | pl.col("reward").is_infinite() | ~pl.col("skill").is_in(SKILLS).fill_null(False)
    )
    first = lf.with_row_index("row", offset=1).filter(bad).select("row", *REQUIRED).head(1).collect()
    if first.height:
        row = first.row(0, named=True)
        field = next(c for c in REQUIRED if row[c] is None) if None in row.values() else (
            "skill" if row["skill"] not in SKILLS else "reward")
        raise ValidationError([(f"{path}:row {row['row']}", field, f"bad value {row[field]!r}")])


# ---------------------------------------------------------------------------------------
# statistics


def _runs_stats(df: pl.DataFrame, by: str, other: str) -> pl.DataFrame | None:
    """The fast path, for the usual layout where each group's rows are contiguous (rollouts
    are written group by group): segment reductions with numpy instead of hashing a
    million string keys. None when the layout does not hold (a key appears in two runs, a
    task's skill/domain/origin varies, null keys or rewards); the caller then hashes."""
    runs = _runs(df, by, other)
    if runs is None:
        return None
    starts, first_rows, mixed_rows = runs
    n, mean, var, lo, hi = _run_moments(df, starts)
    return pl.DataFrame({
        by: first_rows[by],
        "n": pl.Series(n, dtype=pl.UInt32),
        "mean": mean, "var": var,
        "min": lo, "max": hi,
        "skill": first_rows["skill"], "domain": first_rows["domain"], "origin": first_rows["origin"],
        "iteration": _run_iterations(df, starts).alias("iteration"),
        other: _run_other_ids(first_rows[other], starts, mixed_rows).alias(other),
    })


def _runs(df: pl.DataFrame, by: str, other: str) -> tuple[np.ndarray, pl.DataFrame, np.ndarray] | None:
    """(the first row of each run of equal keys, those rows, the rows where the other id
    changes inside a run), or None when the layout does not hold.

    The checks are whole-column comparisons of every row with the row before it (two
    zero-copy slices of a column, all in one query): a value may change only where the key does."""
    size = df.height
    if size == 0 or df[by].null_count() or df["reward"].null_count():
        return None

    def changes(c: str) -> pl.Expr:  # row i + 1 differs from row i (null equals null): n - 1 flags
        return pl.col(c).slice(1).ne_missing(pl.col(c).slice(0, size - 1)).alias(c)

    key = pl.col(by)
    flags = (
        df.select(changes(by), changes("skill"), changes("domain"), changes("origin"), changes(other))
        .select(
            (key.arg_true() + 1).implode().alias("starts"),
            ((pl.col("skill") | pl.col("domain") | pl.col("origin")) & ~key).any().alias("varies"),
            (pl.col(other) & ~key).arg_true().implode().alias("mixed"),  # rows (- 1) whose other id changed in a run
        )
    )
    if flags["varies"][0]:
        return None
    starts = np.concatenate(([0], flags["starts"].explode().to_numpy().astype(np.int64)))
    first_rows = df.select(by, "skill", "domain", "origin", other)[starts]
    keys = first_rows[by]
    # the runs are maximal (neighbouring keys differ), so sorted keys are distinct
    if not keys.is_sorted() and keys.n_unique() != len(starts):
        return None
    return starts, first_rows, flags["mixed"].explode().drop_nulls().to_numpy().astype(np.int64) + 1


def _run_moments(df: pl.DataFrame, starts: np.ndarray) -> tuple[np.ndarray, ...]:
    """n, mean, var (population), min and max of the reward over each run."""
    r = df["reward"].to_numpy()
    n = np.diff(np.append(starts, df.height))
    if (n == n[0]).all():  # every group has G rows (the usual case)
        rows = pl.col("reward").reshape((-1, int(n[0])))  # a G-wide array column: polars reduces it in one pass each
        lo, hi, total = df.select(rows.arr.min(), rows.arr.max().alias("hi"), rows.arr.sum().alias("sum")).to_numpy().T
        mean = total / n[0]
        dev = r.reshape(-1, n[0]) - mean[:, None]
        var = np.einsum("ij,ij->i", dev, dev) / n[0]  # two-pass variance
    else:
        mean = np.add.reduceat(r, starts) / n
        dev = r - np.repeat(mean, n)
        var = np.add.reduceat(dev * dev, starts) / n
        lo, hi = np.minimum.reduceat(r, starts), np.maximum.reduceat(r, starts)
    return n, mean, var, lo, hi


def _run_iterations(df: pl.DataFrame, starts: np.ndarray) -> pl.Series:
    """The latest iteration of each run (null when none of its rows has one)."""
    it = df["iteration"]
    it_nulls, it_lo, it_hi = it.null_count(), it.min(), it.max()
    if it_nulls == df.height or (it_nulls == 0 and it_lo == it_hi):  # one iteration (the usual case), or none
        return pl.repeat(it_lo, len(starts), dtype=pl.Int64, eager=True)
    lowest = np.iinfo(np.int64).min
    it_max = np.maximum.reduceat(it.fill_null(lowest).to_numpy(), starts)
    return pl.Series(it_max, dtype=pl.Int64).replace(lowest, None)


def _run_other_ids(other_ids: pl.Series, starts: np.ndarray, mixed_rows: np.ndarray) -> pl.Series:
    """The other id of each run, kept when it is the same on every row of the run (else null)."""
    if not len(mixed_rows):
        return other_ids
    kept = np.ones(len(starts), dtype=bool)
    kept[np.searchsorted(starts, mixed_rows, side="right") - 1] = False
    return other_ids.zip_with(pl.Series(kept), pl.repeat(None, len(starts), dtype=pl.String, eager=True))


def _hashed_stats(lf: pl.LazyFrame, by: str, other: str) -> pl.DataFrame:
    """The general path: a hash group-by, for rows in any order."""
    return (
        lf.group_by(by)
        .agg(
            pl.len().alias("n"),
            pl.col("reward").mean().alias("mean"),
            pl.col("reward").var(ddof=0).alias("var"),
            pl.col("reward").min().alias("min"),
            pl.col("reward").max().alias("max"),
            # constant within a task; min() keeps the pick independent of row order
            pl.col("skill").min(), pl.col("domain").min(), pl.col("origin").min(),
            pl.col("iteration").max(),
            pl.col(other).min().alias("_lo"), pl.col(other).max().alias("_hi"),
        )
        # a group id shared by every row, else null (grouping a task over several groups)
        .with_columns(pl.when(pl.col("_lo") == pl.col("_hi")).then(pl.col("_lo")).otherwise(None).alias(other))
        .drop("_lo", "_hi")
        .collect(engine="streaming")
    )


def group_stats(lf: pl.LazyFrame, cfg: DetectConfig) -> pl.DataFrame:
    """One row per group, sorted by task id: n, mean, population variance, min, max, phi,
    zone, informative."""
    other = "group_id" if cfg.by == "task_id" else "task_id"
    df = lf.collect()
    stats = _runs_stats(df, cfg.by, other)
    if stats is None:
        stats = _hashed_stats(df.lazy(), cfg.by, other)
    if not (cfg.by == "task_id" and stats["task_id"].is_sorted()):  # rollouts usually come in task order
        stats = stats.sort("task_id", "group_id", nulls_last=True)
    lo, hi = stats["min"].to_numpy(), stats["max"].to_numpy()
    # a constant group has mean = its value and variance 0 exactly (summation rounding
    # would leave ~1e-33 and call a zero-gradient group informative)
    constant = lo == hi
    mean = np.where(constant, lo, stats["mean"].to_numpy())
    var = np.where(constant, 0.0, np.maximum(stats["var"].to_numpy(), 0.0))
    clipped = np.clip(mean, 0.0, 1.0)
    zone = (mean >= cfg.alpha_low).astype(np.int8) + (mean > cfg.alpha_high)  # 0 hard, 1 boundary, 2 mastered
    return stats.select(
        "task_id", "n",
        pl.Series("mean", mean), pl.Series("var", var),
        "min", "max", "skill", "domain", "origin", "iteration", "group_id",
        pl.Series("phi", 4.0 * clipped * (1.0 - clipped)),  # Popoviciu bound of a [0,1] reward's variance
        pl.Series("zone", ZONES).gather(zone),
        pl.Series("informative", var > 0),
    )


def _best(values: np.ndarray, k: int) -> np.ndarray:
    """Mask of the values at least as large as the k-th largest: the k best and all their ties."""
    if k >= len(values):
        return np.ones(len(values), dtype=bool)
    if k <= 0:
        return np.zeros(len(values), dtype=bool)
    return values >= np.partition(values, len(values) - k)[len(values) - k]


def select_boundary(groups: pl.DataFrame, cfg: DetectConfig) -> pl.DataFrame:
    """Add `selected` and `rank`: the top-M boundary groups by phi under a per-skill quota.

    Candidates are the boundary groups in order (phi desc, task_id, group_id). A first pass
    takes each candidate whose skill is under its quota until M are taken; with refill, a
    second pass gives the slots left to the next candidates in the same order. `rank` is the
    position among the selected in that order (0 = highest phi).

    Only the M best candidates and each skill's `quota` best can be taken (a pick of the
    first pass is among its skill's best; a refill pick comes before the M-th candidate), so
    only those, with their ties, are sorted. They keep the full order's first M positions and
    each skill's first `quota`, so both passes pick from them what they would from all.
    """
    boundary = np.flatnonzero((groups["zone"] == "boundary").to_numpy())
    phi = groups["phi"].gather(boundary).round(_PHI_DIGITS).to_numpy()
    # the candidates of each skill (positions in `boundary`), and a small code per skill
    segments = [ix.to_numpy() for ix in groups["skill"].gather(boundary).to_frame().with_row_index("_i")
                .group_by("skill").agg("_i")["_i"]] if len(boundary) else []
    skills = np.empty(len(boundary), dtype=np.int64)
    for code, mine in enumerate(segments):
        skills[mine] = code
    quota = cfg.quota_per_skill
    if quota is None:
        quota = math.ceil(cfg.top_m / len(segments)) if segments else 0
    keep = _best(phi, cfg.top_m)
    for mine in segments:
        keep[mine[_best(phi[mine], quota)]] = True
    # a stable sort on phi alone: `groups` come sorted by (task_id, group_id) from group_stats
    by_phi = np.argsort(-phi[keep], kind="stable")
    rows, skills = boundary[keep][by_phi], skills[keep][by_phi]
    # first pass: the k-th candidate of a skill (in order) is under quota iff k < quota
    by_skill = np.argsort(skills, kind="stable")
    firsts = np.flatnonzero(np.diff(skills[by_skill], prepend=-1))  # where each skill's candidates start
    kth = np.empty(len(skills), dtype=np.int64)
    kth[by_skill] = np.arange(len(skills)) - np.repeat(firsts, np.diff(np.append(firsts, len(skills))))
    under = kth < quota
    first = under & (np.cumsum(under) <= cfg.top_m)
    left = cfg.top_m - int(first.sum()) if cfg.refill else 0
    rest = ~first
    return _with_selection(groups, rows[first | (rest & (np.cumsum(rest) <= left))])


def _with_selection(groups: pl.DataFrame, rows: np.ndarray) -> pl.DataFrame:
    """`selected` and `rank` scattered back to the groups' rows: rank = position in `rows`."""
    selected = np.zeros(groups.height, dtype=bool)
    selected[rows] = True
    rank = np.full(groups.height, -1, dtype=np.int64)
    rank[rows] = np.arange(len(rows))
    return groups.with_columns(
        pl.Series("selected", selected),
        pl.Series("rank", rank).replace(-1, None),
    )


def select_random(groups: pl.DataFrame, cfg: DetectConfig) -> pl.DataFrame:
    """Add `selected` and `rank`: M groups drawn uniformly without replacement from all groups
    (any zone, no per-skill quota), in draw order. The same groups and seed give the same draw."""
    rng = np.random.default_rng(cfg.seed)
    return _with_selection(groups, rng.permutation(groups.height)[: cfg.top_m])


def _latest_key(group: dict) -> tuple[int, str]:
    it = group.get("iteration")
    return (-1 if it is None else it, group.get("group_id") or "")


def add_history(groups: pl.DataFrame, previous: Iterable[dict] | None, ema: float) -> pl.DataFrame:
    """Add ema_mean, iterations_seen and zone_counts, carried on from the previous groups."""
    previous = list(previous or ())
    if not previous:  # the first iteration: every group is seen for the first time
        return groups.with_columns(
            pl.col("mean").alias("ema_mean"), pl.lit(1, dtype=pl.Int64).alias("iterations_seen"),
            pl.struct(*[(pl.col("zone") == z).cast(pl.Int64).alias(z) for z in ZONES]).alias("zone_counts"),
        )
    prev: dict[str, dict] = {}
    for p in previous:
        # several rows per task (grouped by group_id): the latest iteration carries the history
        old = prev.get(p["task_id"])
        if old is None or _latest_key(p) >= _latest_key(old):
            prev[p["task_id"]] = p
    cols: dict[str, list] = {"task_id": [], "_ema": [], "_seen": [], **{f"_{z}": [] for z in ZONES}}
    for task_id, p in prev.items():
        counts = dict.fromkeys(ZONES, 0)
        counts.update(p.get("zone_counts") or {p["zone"]: 1})
        cols["task_id"].append(task_id)
        cols["_ema"].append(p["mean"] if p.get("ema_mean") is None else p["ema_mean"])
        cols["_seen"].append(p.get("iterations_seen") or 1)
        for z in ZONES:
            cols[f"_{z}"].append(counts[z])
    before = pl.DataFrame(cols, schema={"task_id": pl.String, "_ema": pl.Float64, "_seen": pl.Int64,
                                        **{f"_{z}": pl.Int64 for z in ZONES}})
    seen = pl.col("_seen").is_not_null()
    return (
        groups.join(before, on="task_id", how="left", maintain_order="left")
        .with_columns(
            # ema_mean = ema * previous ema_mean + (1 - ema) * mean; the first time: the mean
            pl.when(seen).then(ema * pl.col("_ema") + (1.0 - ema) * pl.col("mean")).otherwise(pl.col("mean")).alias("ema_mean"),
            (pl.col("_seen").fill_null(0) + 1).alias("iterations_seen"),
            pl.struct(*[(pl.col(f"_{z}").fill_null(0) + (pl.col("zone") == z).cast(pl.Int64)).alias(z) for z in ZONES]).alias("zone_counts"),
        )
        .drop("_ema", "_seen", *[f"_{z}" for z in ZONES])
    )


def detect_frame(scored: pl.LazyFrame | pl.DataFrame | Iterable[dict], cfg: DetectConfig | None = None,
                 previous: Iterable[dict] | None = None) -> pl.DataFrame:
    """The group records as a frame (one row per group, sorted by task id)."""
    cfg = cfg or DetectConfig()
    cfg.check()
    if isinstance(scored, pl.DataFrame):
        scored = scored.lazy()
    if isinstance(scored, pl.LazyFrame):
        lf = _with_columns(scored, scored.collect_schema().names(), "scored rollouts")
    else:
        lf = frame_of(scored)
    groups = add_history(group_stats(lf, cfg), previous, cfg.ema)
    return select_random(groups, cfg) if cfg.select == "random" else select_boundary(groups, cfg)


def detect(scored: pl.LazyFrame | pl.DataFrame | Iterable[dict], cfg: DetectConfig | None = None,
           previous: Iterable[dict] | None = None) -> list[dict]:
    """Group records (schema group), sorted by task id: statistics, zone, history, selection."""
    groups = detect_frame(scored, cfg, previous)
    with records.no_gc():
        return groups.to_dicts()


# ---------------------------------------------------------------------------------------
# summary


def summary_table(groups: Sequence[dict]) -> Table:
    """Counts per skill and zone, the informative fraction and the selection, for stderr."""
    table = Table(title=f"rods detect: {len(groups)} groups", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("skill", "n", *ZONES, "informative", "selected", "mean"):
        table.add_column(name, justify="left" if name == "skill" else "right", no_wrap=True)
    skills = sorted({g["skill"] for g in groups}, key=skill_order)

    def row(label: str, rows: list[dict]) -> list[str]:
        n = len(rows)
        zones = [str(sum(g["zone"] == z for g in rows)) for z in ZONES]
        informative = sum(g["informative"] for g in rows)
        mean = sum(g["mean"] for g in rows) / n if n else float("nan")
        return [label, str(n), *zones, f"{informative} ({informative / n:.0%})" if n else "0",
                str(sum(g["selected"] for g in rows)), f"{mean:.3f}"]

    for s in skills:
        table.add_row(*row(s, [g for g in groups if g["skill"] == s]))
    table.add_section()
    table.add_row(*row("all", list(groups)), style="bold")
    return table
