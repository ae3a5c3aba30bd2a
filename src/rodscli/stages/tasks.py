"""`rods tasks builtin | replay | stats`: make the built-in seed tasks, check that every
task's reference solution replays, and count what a task file holds (docs/architecture.md section 3).

`replay_tasks` runs each reference twice on fresh episodes: once in file order and once,
independently, in reverse order. A task passes when no reference call comes back with an
error and both replays give the same result texts and the same state after every user
turn; the reverse order catches state that leaks from one episode into the next.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich import box
from rich.table import Table

from rodscli.config import option
from rodscli.envs.base import ReferenceTrace, replay_reference
from rodscli.envs.builtin.seeds import PER_SKILL, seed_tasks
from rodscli.errors import OptionError, RodsError
from rodscli.reporter import Reporter, or_silent
from rodscli.schemas import skill_order

# ---------------------------------------------------------------------------------------
# rods tasks builtin


@dataclass
class BuiltinTasksOptions:
    """Options of `rods tasks builtin`."""

    domain: str | None = option(None, help="Only this built-in domain (retail or workspace); default: all.")
    per_skill: int = option(PER_SKILL, help="Seed tasks per domain and skill type (base, miss_func, miss_param, "
                            "long_context): the default gives 2 x 4 x 60 = 480 tasks.")
    profile: bool = option(True, help="Compute each task's complexity profile Phi (replays the reference).")
    worlds: str | None = option(None, help="World numbers, e.g. 1-6 or 1,3,8-9: the tasks of each world in turn "
                                "(new worlds and stories, ids ending in -s<world>); default: the global --seed.")

    def check(self) -> None:
        if self.per_skill < 1:
            raise OptionError(f"--per-skill must be >= 1, got {self.per_skill}", field="--per-skill")
        if self.worlds is not None:
            parse_worlds(self.worlds)


def parse_worlds(text: str) -> list[int]:
    """`1-6` or `1,3,8-9` -> the world numbers in order, each once."""
    worlds: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        lo, dash, hi = item.partition("-")
        try:
            first, last = int(lo), int(hi if dash else lo)
        except ValueError:
            raise OptionError(f"{item!r} is not a world number or a range a-b (e.g. 1-6 or 1,3,8-9)", field="--worlds") from None
        if first < 0 or last < first:
            raise OptionError(f"{item!r} is not a range of world numbers >= 0", field="--worlds")
        worlds += range(first, last + 1)
    return list(dict.fromkeys(worlds))


def builtin_tasks(opts: BuiltinTasksOptions, seed: int = 0, reporter: Reporter | None = None) -> list[dict]:
    """The built-in domains' seed tasks, in world `seed` (or in each world of `opts.worlds`, counted on `reporter`)."""
    opts.check()
    worlds = parse_worlds(opts.worlds) if opts.worlds is not None else [seed]
    shown = or_silent(reporter).track(worlds, "worlds") if len(worlds) > 1 else worlds
    tasks = [t for w in shown for t in seed_tasks(opts.domain, seed=w, per_skill=opts.per_skill)]
    if not opts.profile:
        for task in tasks:
            task["profile"] = None
    return tasks


# ---------------------------------------------------------------------------------------
# rods tasks replay


@dataclass
class ReplayFailure:
    """A task whose reference does not replay: where it is in its file, and why."""

    where: str
    task_id: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.task_id}: {self.message}"


@dataclass
class ReplayReport:
    n_tasks: int = 0
    n_turns: int = 0
    n_calls: int = 0  # per replay
    seconds: float = 0.0  # both replays
    failures: list[ReplayFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _replay(task: dict) -> ReferenceTrace | str:
    """The task's reference trace, or why it could not start (a bad task is a failure, not a crash)."""
    try:
        return replay_reference(task)
    except RodsError as exc:
        return f"cannot start an episode: {exc}"


def _first_error(task: dict, trace: ReferenceTrace) -> str | None:
    for turn, errors in enumerate(trace.errors):
        for i, error in enumerate(errors):
            if error is not None:
                name = task["reference"][turn][i]["name"]
                return f"turn {turn} call {i} ({name}): {error}: {trace.results[turn][i]}"
    return None


def _difference(first: ReferenceTrace, second: ReferenceTrace) -> str | None:
    for turn, (a, b) in enumerate(zip(first.state_hashes, second.state_hashes, strict=True)):
        if first.results[turn] != second.results[turn]:
            i, x, y = next((i, x, y) for i, (x, y) in enumerate(zip(first.results[turn], second.results[turn], strict=True))
                           if x != y)
            return f"turn {turn} call {i}: a second replay gave another result: {where_differs(x, y)}"
        if a != b:
            return f"turn {turn}: the state after a second replay differs"
    return None


def where_differs(a: str, b: str, context: int = 30) -> str:
    """The first place two texts differ, with a little context: "...x..." vs "...y..."."""
    i = next((k for k, (p, q) in enumerate(zip(a, b, strict=False)) if p != q), min(len(a), len(b)))
    start = max(0, i - context)
    cut = "..." if start else ""
    return f"{cut}{a[start:i + context]!r} vs {cut}{b[start:i + context]!r}"


def replay_tasks(tasks: Sequence[dict], wheres: Sequence[str] | None = None, reporter: Reporter | None = None) -> ReplayReport:
    """Replay every task's reference twice (file order, then reverse order) and check it.

    `wheres[i]` names task i in its file ('tasks.jsonl:12'); failures carry it. Each pass is
    counted on `reporter`.
    """
    reporter = or_silent(reporter)
    wheres = list(wheres) if wheres is not None else [f"task {i + 1}" for i in range(len(tasks))]
    report = ReplayReport(n_tasks=len(tasks))
    start = time.perf_counter()
    first: list[ReferenceTrace | str] = []
    for task in reporter.track(tasks, "replay"):
        first.append(_replay(task))
        report.n_turns += len(task["reference"])
        report.n_calls += sum(len(calls) for calls in task["reference"])
    problems: dict[int, str] = {}
    for i in reporter.track(range(len(tasks) - 1, -1, -1), "replay again", total=len(tasks)):
        trace = first[i]
        if isinstance(trace, str):
            problems[i] = trace
            continue
        problem = _first_error(tasks[i], trace)
        if problem is None:
            again = _replay(tasks[i])
            problem = again if isinstance(again, str) else _difference(trace, again)
        if problem is not None:
            problems[i] = problem
    report.seconds = time.perf_counter() - start
    report.failures = [ReplayFailure(wheres[i], str(tasks[i].get("id")), problems[i]) for i in sorted(problems)]
    return report


# ---------------------------------------------------------------------------------------
# rods tasks stats


def _depth(task: dict) -> int:
    profile = task.get("profile")
    if profile and "depth" in profile:
        return int(profile["depth"])
    from rodscli.profile import compute_profile

    return int(compute_profile(task)["depth"])


def task_stats(tasks: Sequence[dict]) -> dict[str, dict]:
    """Counts of tasks by domain, skill, domain x skill, origin, dependency depth, user turns
    and reference calls (depth from the task's profile, computed when it has none)."""
    counts: dict[str, Counter] = {k: Counter() for k in ("domain", "skill", "domain_skill", "origin", "depth", "turns", "calls")}
    for t in tasks:
        counts["domain"][t.get("domain") or t.get("env")] += 1
        counts["skill"][t.get("skill")] += 1
        counts["domain_skill"][f"{t.get('domain') or t.get('env')}/{t.get('skill')}"] += 1
        counts["origin"][t.get("origin") or "seed"] += 1
        counts["depth"][_depth(t)] += 1
        counts["turns"][len(t["user_turns"])] += 1
        counts["calls"][sum(len(calls) for calls in t["reference"])] += 1
    return {"n_tasks": len(tasks), **{k: dict(sorted(c.items(), key=_count_order)) for k, c in counts.items()}}


def _count_order(item: tuple) -> tuple:
    key = item[0]
    return (0, key, "") if isinstance(key, int) else (1, 0, str(key))


def stats_tables(stats: dict, title: str = "") -> list[Table]:
    """The counts of `task_stats` as rich tables: domain x skill, then the distributions."""
    skills = sorted(stats["skill"], key=skill_order)
    by_domain = Table(title=f"{title}{stats['n_tasks']} tasks by domain and skill", title_justify="left",
                      box=box.SIMPLE_HEAD, pad_edge=False)
    by_domain.add_column("domain", no_wrap=True)
    for s in (*skills, "all"):
        by_domain.add_column(s, justify="right", no_wrap=True)
    for d in sorted(stats["domain"]):
        by_domain.add_row(d, *[str(stats["domain_skill"].get(f"{d}/{s}", 0)) for s in skills], str(stats["domain"][d]))
    by_domain.add_section()
    by_domain.add_row("all", *[str(stats["skill"][s]) for s in skills], str(stats["n_tasks"]), style="bold")

    spread = Table(title="tasks by depth, turns, calls", title_justify="left",
                   box=box.SIMPLE_HEAD, pad_edge=False)
    spread.add_column("value", justify="right")
    for k in ("depth", "turns", "calls"):
        spread.add_column(k, justify="right")
    values = sorted({int(v) for k in ("depth", "turns", "calls") for v in stats[k]})
    for v in values:
        spread.add_row(str(v), *[str(stats[k].get(v, stats[k].get(str(v), 0))) for k in ("depth", "turns", "calls")])
    return [by_domain, spread]


def record_wheres(path: str, n: int) -> list[str]:
    """'file:line' (JSONL) or 'file:row N' (Parquet) of the `n` records of a task file."""
    from rodscli import records

    if path == "-":  # stdin was read once already: number the records
        return [f"-:{i + 1}" for i in range(n)]
    row = records.file_format(path) == "parquet"
    return [f"{path}:row {i}" if row else f"{path}:{i}" for i, _ in records.iter_raw(path)]
