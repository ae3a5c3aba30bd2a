"""Grounding: a plan step's arguments chosen in the live state of a new world.

A `flow` argument takes the value at the same place in the producing call's new result;
a `state` argument names an entity of the live state at the seed's path pattern (the same
kind of entity, distinct entities kept distinct, something other than the seed's value
preferred); a `literal` is drawn from the API graph; `keep` stays. A value chosen for
one of the seed's values is remembered (`memo`): the same seed value gets the same
variant value throughout the plan.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from rodscli.profile import value_key
from rodscli.synth.failures import StepFailed
from rodscli.synth.graph import ApiGraph
from rodscli.synth.paths import expand, follow
from rodscli.synth.plan import Plan, Source, Step, shape

if TYPE_CHECKING:
    from rodscli.synth.states import OwnerStates

_SCALARS = frozenset((str, int, float, bool, type(None)))


def memo_key(value: Any) -> Any:
    """The seed's value as a dict key: scalars as (type, value) so that 1, 1.0 and True stay apart."""
    if type(value) in _SCALARS or isinstance(value, str | int | float | bool):
        return (type(value), value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass
class Grounder:
    """Grounds one plan on one live episode (state read at each call)."""

    plan: Plan
    graph: ApiGraph
    rng: random.Random
    keep_literals: bool = False  # literal arguments keep the seed's values (the last restart)
    memo: dict[Any, Any] = field(default_factory=dict)  # seed value (see memo_key) -> variant value
    donors: dict[str, list[dict]] = field(default_factory=dict)  # tool -> the donor task's calls of it
    parsed: list[Any] = field(default_factory=list)  # variant results, parsed
    states: OwnerStates | None = None  # the episode's owner states (options kept per state)

    def ground(self, step: Step, read: Callable[[], Any], fresh: bool) -> dict:
        """The step's arguments; `read()` gives the live state (read only when an argument
        needs it); `fresh`: a repair, remembered choices are made again."""
        chosen: dict[str, Any] = {}
        live: Any = None
        paths: dict[str, tuple] = {}
        literal: dict[str, Any] = {}  # literal arguments still to draw: name -> the seed's value
        # anchors before the arguments linked to them
        if step.order is None:
            step.order = sorted(step.arguments, key=lambda a: step.sources[a].link is not None)
        for arg in step.order:
            value, src = step.arguments[arg], step.sources[arg]
            key = memo_key(value) if src.kind not in ("keep", "flow", "list") else None
            if src.kind == "keep":
                chosen[arg] = value
            elif src.kind == "flow":
                chosen[arg] = self._flow(step, arg, src)
            elif src.kind == "list":
                chosen[arg] = [self._flow(step, arg, p) if p.kind == "flow" else v for p, v in zip(src.parts, value, strict=True)]
            elif key in self.memo and not fresh:
                chosen[arg] = self.memo[key]
            elif src.kind == "state":
                if live is None:
                    live = read()
                picked = self._entity(live, value, src, key, paths)
                if picked is None:  # this world has no such entity: a value the API graph has seen
                    literal[arg] = value
                    continue
                paths[arg], chosen[arg] = picked
            else:
                literal[arg] = value
                continue
            if src.kind == "state":
                self.memo[key] = chosen[arg]
        if literal:
            chosen.update(self._literals(step, literal, fresh))
        return {arg: chosen[arg] for arg in step.arguments}

    def _entity(self, live: Any, value: Any, src: Source, key: Any, paths: dict[str, tuple]) -> tuple[tuple, Any] | None:
        """A state argument's (path, value) in the live state, or None when nothing matches."""
        path, mask = list(src.path), list(src.mask)
        start = 0
        if src.link is not None and src.link[0] in paths:
            start = src.link[1]
            path[:start] = paths[src.link[0]][:start]
        # a step of the path that names something already chosen (the folder the
        # agent moved into) stays that choice: cd(X) then cp(a file of X)
        for i in range(start, len(path) - (1 if src.is_key else 0)):
            pinned = self.memo.get(memo_key(path[i])) if mask[i] else None
            if pinned is not None:
                path[i], mask[i] = pinned, False
        options = self._options(live, tuple(path), tuple(mask), src, start, type(value))
        if not options:
            return None
        # distinct entities in the seed stay distinct (two products stay two), else
        # an accidental flow edge changes Phi; and prefer something other than the seed's
        taken = {memo_key(v) for k, v in self.memo.items() if k != key}
        if type(value) in _SCALARS:  # every option has the seed's type: its key is (type, value)
            fresh_options = [o for o in options if (type(value), o[1]) not in taken] or options
        else:
            fresh_options = [o for o in options if memo_key(o[1]) not in taken] or options
        different = [o for o in fresh_options if o[1] != value]
        return self.rng.choice(different or fresh_options)

    def _literals(self, step: Step, literal: dict[str, Any], fresh: bool) -> dict[str, Any]:
        """Values for the step's literal arguments (name -> the seed's value), from the API graph."""
        if fresh:  # a repair: another donor for this tool
            self.donors.pop(step.name, None)
        drawn = dict(literal) if self.keep_literals else \
            self.graph.draw_literals(step.name, literal, self.rng, self.plan.occurrence[step.index], self.donors)
        for arg, v in drawn.items():
            self.memo[memo_key(literal[arg])] = v
        return drawn

    def _options(self, live: Any, path: tuple, mask: tuple, src: Source, start: int, kind: type) -> list:
        """The entities of the live state a state argument may name: (path, value) for every
        match of the pattern whose value has the seed's type and whose entity has the seed's
        shape; kept per owner state (by its bytes) when `states` is given."""
        states = self.states
        blob = states.blob(path[0]) if states is not None and path else None
        key = (path[0], blob, path, mask, src.is_key, start, kind, src.shape) if blob is not None else None
        options = states.views.get(key) if states is not None and key is not None else None
        if options is None:
            options = [(p, v) for p, v in expand(live, path, mask, src.is_key, start) if type(v) is kind
                       and (src.shape is None or shape(follow(live, p)) == src.shape)]
            if states is not None and key is not None:
                states.keep(key, options)
        return options

    def _flow(self, step: Step, arg: str, src: Source) -> Any:
        """The value at the same place in the producing call's new result."""
        node = self.parsed[src.call]
        try:
            if not src.is_key:
                value = follow(node, src.path)
                if isinstance(value, dict | list):
                    return copy.deepcopy(value)  # results are shared (see execute): never handed out
                return value_key(value) if src.cast == "str" else value
            parent = follow(node, src.path[:-1])
        except KeyError:
            raise StepFailed(f"{step.name}.{arg}: the result of call {src.call} has no {list(src.path)}") from None
        keys = sorted(parent) if isinstance(parent, dict) else []
        if not keys:
            raise StepFailed(f"{step.name}.{arg}: the result of call {src.call} has no keys at {list(src.path[:-1])}")
        return src.path[-1] if src.path[-1] in keys else self.rng.choice(keys)
