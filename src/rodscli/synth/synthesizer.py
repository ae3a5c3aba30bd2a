"""The synthesizer: every step composed, per seed and attempt (see the package doc)."""

from __future__ import annotations

import contextlib
import gc
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rodscli.config import option
from rodscli.errors import InputError, OptionError
from rodscli.reporter import Reporter, or_silent
from rodscli.synth.execute import Execution, execute
from rodscli.synth.failures import StepFailed
from rodscli.synth.filters import Candidate, Filter, NearDuplicate, ProfileMatch, Replay, Trivial
from rodscli.synth.graph import ApiGraph
from rodscli.synth.plan import Plan, make_plan
from rodscli.synth.worlds import WorldPool
from rodscli.synth.write import WRITERS, Writer

# rejection reasons in the order the stats list them (a new filter's reason comes after)
REASONS = ("execution_failed", "replay_failed", "profile_mismatch", "near_duplicate", "trivial")
RESTARTS = 4  # executions of one attempt in the same world before it is given up
OUTCOMES = 50_000  # call outcomes remembered in one run (see execute) before they are forgotten
TASK_FIELDS = ("env", "domain", "skill", "env_config", "tools", "withheld", "system_prompt")  # a variant keeps the seed's


@dataclass
class SynthesizeOptions:
    per_seed: int = option(4, help="Variants to make per selected seed task (0: write an empty candidates file).")
    iteration: int = option(0, help="Loop iteration n; candidates become trainable from n + 1.")
    writer: str = option("template", help="How user turns are written: template (deterministic), or llm (a policy rewrites each template turn; a rewrite is kept only when the critic passes it).")
    policy: str | None = option(None, help="llm writer: the policy checkpoint that rewrites (any Hugging Face checkpoint directory).")
    backend: str = option("hf", help="llm writer: the rollout backend that runs the policy (hf, vllm, openai).")
    chat_template: str | None = option(None, help="llm writer: Jinja chat template file that replaces the policy checkpoint's own.")
    tolerance: float = option(0.15, help="Largest accepted profile distance between a candidate and its seed (0..1).")
    max_jaccard: float = option(0.7, help="Reject a candidate whose call-sequence Jaccard similarity to a known task or accepted candidate is at least this.")
    attempts: int = option(8, help="Attempts per requested variant (each on a new world) before giving up on it.")
    repairs: int = option(4, help="Re-groundings of one failing call within an attempt (bounded repair).")
    swap: float = option(0.3, help="Chance that a leaf step (nothing flows in or out) is done by another tool of its class, drawn from the API graph.")
    seed: int = option(0, help="Seed of the world, entity and wording choices.")

    def check(self) -> None:
        """Raise an OptionError naming the first bad option."""
        if self.writer not in WRITERS:
            raise OptionError(f"unknown writer {self.writer!r} (known: {', '.join(WRITERS)})", field="--writer")
        if not 0 <= self.tolerance <= 1 or not 0 < self.max_jaccard <= 1:
            raise OptionError("need 0 <= --tolerance <= 1 and 0 < --max-jaccard <= 1", field="--tolerance")
        if self.per_seed < 0 or self.attempts < 1 or self.repairs < 0:
            raise OptionError("need --per-seed >= 0, --attempts >= 1, --repairs >= 0", field="--per-seed")
        if self.writer == "llm" and not self.policy:
            raise OptionError("the llm writer needs --policy (a checkpoint to rewrite the user turns with)", field="--policy")
        llm_only = [name for name, value in (("--policy", self.policy), ("--chat-template", self.chat_template)) if value]
        if self.writer != "llm" and llm_only:  # read only by the llm writer: given to another, a silent no-op
            raise OptionError(f"{llm_only[0]} is read by the llm writer only: add --writer llm, or drop it", field=llm_only[0])


@dataclass
class Synthesizer:
    """Makes verified variants of seed tasks; keeps the API graph, the worlds, the filters and the counts."""

    opts: SynthesizeOptions
    known: list[dict] = field(default_factory=list)  # buffer and batch tasks (near-duplicates, worlds, literals)
    rejected: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # execution_failed attempts by the last restart's cause
    attempted: int = 0
    replacing: Counter = field(default_factory=Counter)  # the teacher's replacement attempts, and their rejections by reason

    def __post_init__(self) -> None:
        self.opts.check()
        self.graph = ApiGraph.mine(self.known)
        self.worlds = WorldPool(self.known)
        self.made: dict[str, tuple[Plan, int]] = {}  # accepted candidate id -> its plan and variant number
        self.views: dict = {}  # owner states met, converted to JSON data (see OwnerStates.view)
        self.outcomes: dict = {}  # (call, owner state) -> the call's outcome and the state it left (see execute)
        self.writer: Writer = WRITERS[self.opts.writer](self.opts)
        self.filters: list[Filter] = [  # the cheap ones first; Phi before the replay when it can
            Trivial(), NearDuplicate(self.opts.max_jaccard, self.known), ProfileMatch(self.opts.tolerance),
            Replay(self.views), ProfileMatch(self.opts.tolerance)]

    def variants(self, seed: dict) -> list[dict]:
        """Up to `per_seed` accepted variants of `seed` (each given `attempts` tries)."""
        if self.opts.per_seed == 0:
            return []
        plan = make_plan(seed)
        self.graph.add_plan(plan)
        out = []
        for k in range(self.opts.per_seed):
            for attempt in range(self.opts.attempts):
                self.attempted += 1
                cand, reason = self.attempt(plan, k, attempt)
                if cand is not None:
                    out.append(cand)
                    self.made[cand["id"]] = (plan, k)
                    break
                self.rejected[reason] += 1
        return out

    def attempt(self, plan: Plan, k: int, attempt: int) -> tuple[dict | None, str]:
        """Variant `k` of the plan's seed, try `attempt`: the task, or None and the rejection reason."""
        seed, opts = plan.seed, self.opts
        rng = random.Random(f"rods-synth:{opts.seed}:{opts.iteration}:{seed['id']}:{k}:{attempt}")
        world, world_from = self.worlds.new_world(seed, rng, attempt, opts.seed)
        task = {key: seed[key] for key in TASK_FIELDS if key in seed}
        task["initial_state"] = world
        run, restart = self.execute(plan, task, rng)
        if run is None:
            return None, "execution_failed"
        task["reference"] = run.reference
        c = Candidate(plan, task, run)
        for f in self.filters:
            if not f.keep(c):
                return None, f.reason
        for f in self.filters:
            f.accepted(c)
        user_turns = self.writer.turns(plan, run, rng)
        return self.record(c, user_turns, k, {"world": world_from, "attempt": attempt, "restarts": restart}), "accepted"

    def replacement(self, task: dict) -> dict | None:
        """A new candidate for the variant `task` is (the teacher's critique rejected it): the
        attempts after the one that made it, each on a new world, up to `attempts` of them;
        None when none passes. Counted apart from the first pass (`replacing`)."""
        plan, k = self.made[task["id"]]
        first = task["synthesis"]["attempt"] + 1
        for attempt in range(first, first + self.opts.attempts):
            self.replacing["attempted"] += 1
            cand, reason = self.attempt(plan, k, attempt)
            if cand is not None:
                return cand
            self.replacing[reason] += 1
        return None

    def execute(self, plan: Plan, task: dict, rng: random.Random) -> tuple[Execution | None, int]:
        """The plan executed on the task's world, and the restart that made it (None: every one failed).

        A call that fails although re-grounded usually needs another choice upstream (a
        customer who has a shipped order): start over in the same world a few times, the
        last time with the seed's literal values (values that only work together, like the
        zip codes of a known route, may come from different calls).
        """
        if len(self.outcomes) >= OUTCOMES:
            self.outcomes.clear()
        last = RESTARTS - 1
        for restart in range(RESTARTS):
            try:
                return execute(plan, task, self.graph, rng, self.opts.repairs, keep_literals=restart == last,
                               swap=self.opts.swap if restart < last else 0.0, outcomes=self.outcomes,
                               views=self.views), restart
            except StepFailed as exc:
                failure = exc
        self.failures[failure.cause()] += 1
        return None, RESTARTS

    def record(self, c: Candidate, user_turns: list[str], k: int, how: dict) -> dict:
        """The accepted candidate as a task record, with its lineage and how it was made."""
        seed, opts, run = c.plan.seed, self.opts, c.run
        return {
            "id": f"{seed['id']}~i{opts.iteration}v{k}",
            **c.task,
            "origin": "synthetic",
            "parent_id": seed["id"],
            "generation": int(seed.get("generation") or 0) + 1,
            "created_iter": opts.iteration,
            "user_turns": user_turns,
            "profile": c.profile,
            "synthesis": {
                "seed_id": seed["id"],
                "writer": opts.writer,
                **how,
                "repairs": run.repairs,
                "plan": [[call["name"] for call in turn] for turn in run.reference],
                "sources": run.kinds,
                "profile_distance": round(c.distance, 4),
                "max_jaccard": round(c.similarity, 4),
                "checks": ["executed", "replay", f"profile<={opts.tolerance}", f"jaccard<{opts.max_jaccard}", "nontrivial"],
            },
            "meta": {"synthesizer": "rods-synthesize/1", "seed": opts.seed},
        }

    def stats(self, accepted: int, requested: int) -> dict:
        feeds = sorted(self.graph.feeds.items(), key=lambda kv: (-kv[1], kv[0]))
        reasons = list(REASONS) + [f.reason for f in self.filters if f.reason not in REASONS]
        return {"requested": requested, "attempted": self.attempted, "accepted": accepted,
                "rejected": {r: self.rejected.get(r, 0) for r in dict.fromkeys(reasons)},
                # why executions failed (tool: the simulator's message), most frequent first
                "execution_failures": dict(sorted(self.failures.items(), key=lambda kv: (-kv[1], kv[0]))[:10]),
                # the mined API graph: tools with observed calls, and the flow edges the
                # seeds' plans used (producer -> consumer.argument), most used first
                "api_graph": {"tools": len(self.graph.calls),
                              "observed_calls": sum(len(v) for v in self.graph.calls.values()),
                              "flow_edges": len(feeds),
                              "top_flows": {f"{p} -> {c}.{a}": n for (p, c, a), n in feeds[:10]}}}


@contextlib.contextmanager
def _long_lived_frozen() -> Iterator[None]:
    """The objects alive before synthesis (the tasks, the buffer, the mined graph: many, and
    long-lived) are left out of the cyclic collector while it runs, so that its passes walk
    only what synthesis allocates (episodes hold cycles: they are still collected)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def synthesize(seeds: list[dict], known: list[dict], opts: SynthesizeOptions,
               reporter: Reporter | None = None,
               teacher: Any = None) -> tuple[list[dict], dict]:
    """Variants of every seed, and the counts (requested, attempted, accepted, rejected by reason);
    the seeds are counted as they are done on `reporter`.

    With `teacher` (a `rodscli.synth.teacher.TeacherOptions` with a URL) the accepted variants go
    through the teacher's Rewrite, Critique and Augment agents, counted in stats["teacher"]."""
    if teacher is not None and teacher.url and opts.writer != "template":
        raise OptionError("--teacher-url rewrites the template writer's turns: drop --writer llm", field="--writer")
    synth = Synthesizer(opts, known)
    out: list[dict] = []
    with _long_lived_frozen():
        for seed in (or_silent(reporter).track(seeds, "synthesize") if opts.per_seed else seeds):
            out.extend(synth.variants(seed))
    stats = synth.stats(len(out), len(seeds) * opts.per_seed)
    stats.update(synth.writer.revise(out))
    if teacher is not None and teacher.url:
        from rodscli.synth.teacher import teach

        out, stats["teacher"] = teach(out, teacher, opts.seed, replace=synth.replacement)
        if "critique_attempts" in stats["teacher"]:  # the programmatic attempts made for replacements, and why they failed
            stats["teacher"]["critique_attempts"]["synthesized"] = dict(sorted(synth.replacing.items()))
    return out, stats


def selected_seeds(groups: list[dict], tasks_by_id: dict[str, dict], where: str) -> list[dict]:
    """The tasks of the selected groups, in rank order (the highest phi first)."""
    chosen = sorted((g for g in groups if g.get("selected")), key=lambda g: (g.get("rank") is None, g.get("rank") or 0, g["task_id"]))
    seeds, seen = [], set()
    for g in chosen:
        task = tasks_by_id.get(g["task_id"])
        if task is None:
            raise InputError(f"selected task {g['task_id']!r} is in neither --tasks nor --buffer", where=where, field="task_id")
        if g["task_id"] not in seen:
            seen.add(g["task_id"])
            seeds.append(task)
    return seeds
