"""The API graph mined from the reference calls of known tasks: where literal argument
values are drawn from, and which outputs feed which arguments."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from rodscli.synth.plan import Plan


@dataclass
class ApiGraph:
    """What the reference calls of known tasks say about each tool and argument.

    `calls[tool]` holds the argument sets seen in reference calls: literal arguments are
    drawn from them, all the literals of one call from one observed call, so that values
    that only make sense together (a route's two cities, a currency pair) stay together.
    `literals[(tool, arg)]` is the per-argument pool used when no observed call has every
    needed argument. `feeds[(producer, consumer, arg)]` counts flow edges, which outputs
    feed which arguments (mined when plans are built).
    """

    calls: dict[str, list[dict]] = field(default_factory=dict)
    sequences: dict[str, list[list[dict]]] = field(default_factory=dict)  # tool -> per task, its calls in order
    literals: dict[tuple[str, str], list] = field(default_factory=dict)
    feeds: Counter = field(default_factory=Counter)
    _fits: dict = field(default_factory=dict, repr=False)  # (tool, literal arguments) -> observed calls that have them
    _donors: dict = field(default_factory=dict, repr=False)  # (tool, k) -> the tasks' sequences with a k-th call of it

    @classmethod
    def mine(cls, tasks: Iterable[dict]) -> ApiGraph:
        seen: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
        calls: dict[str, dict[str, dict]] = defaultdict(dict)
        sequences: dict[str, dict[bytes, list[dict]]] = defaultdict(dict)
        for t in tasks:
            per_tool: dict[str, list[dict]] = defaultdict(list)
            for turn in t["reference"]:
                for c in turn:
                    per_tool[c["name"]].append(c["arguments"])
                    calls[c["name"]].setdefault(orjson.dumps(c["arguments"], option=orjson.OPT_SORT_KEYS).decode(), c["arguments"])
                    for arg, value in c["arguments"].items():
                        if isinstance(value, str | int | float) and not isinstance(value, bool):
                            seen[(c["name"], arg)].setdefault(orjson.dumps(value).decode(), value)
            for name, seq in per_tool.items():
                sequences[name].setdefault(orjson.dumps(seq, option=orjson.OPT_SORT_KEYS), seq)
        # sorted by their JSON text: the pools do not depend on task order
        return cls(calls={k: [v[s] for s in sorted(v)] for k, v in calls.items()},
                   sequences={k: [v[s] for s in sorted(v)] for k, v in sequences.items()},
                   literals={k: [v[s] for s in sorted(v)] for k, v in seen.items()})

    def draw_literals(self, tool: str, wanted: dict[str, Any], rng: random.Random,
                      occurrence: int = 0, donors: dict[str, list[dict]] | None = None) -> dict[str, Any]:
        """Values for the literal arguments `wanted` (name -> the seed's value), from one observed call if possible.

        The k-th call of a tool in a plan takes the k-th call of that tool in one donor task
        (kept in `donors` for the whole plan), so that values that work only together
        across calls (the two cities whose distance is then asked) come from one task.
        """
        if donors is not None:
            seq = donors.get(tool)
            if seq is None:
                options = self._donors.get((tool, occurrence))
                if options is None:
                    options = self._donors[(tool, occurrence)] = [q for q in self.sequences.get(tool, ()) if len(q) > occurrence]
                seq = donors[tool] = rng.choice(options) if options else []
            if len(seq) > occurrence and all(a in seq[occurrence] and type(seq[occurrence][a]) is type(v)
                                             for a, v in wanted.items()):
                return {a: seq[occurrence][a] for a in wanted}
        need = (tool, tuple(sorted((a, type(v).__name__) for a, v in wanted.items())))
        fits = self._fits.get(need)
        if fits is None:
            fits = [c for c in self.calls.get(tool, ()) if all(a in c and type(c[a]) is type(v) for a, v in wanted.items())]
            self._fits[need] = fits
        if fits:
            pick = rng.choice(fits)
            return {a: pick[a] for a in wanted}
        out = {}
        for a, v in wanted.items():
            pool = [x for x in self.literals.get((tool, a), ()) if type(x) is type(v)] or [v]
            out[a] = rng.choice(pool)
        return out

    def add_plan(self, plan: Plan) -> None:
        for step in plan.steps:
            for arg, src in step.sources.items():
                if src.kind == "flow":
                    self.feeds[(plan.steps[src.call].name, step.name, arg)] += 1

