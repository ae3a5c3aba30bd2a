"""Built-in domains: stateful simulators written in this project, the embedded default.

Each domain is a plain Python class following the Python-class convention (public
documented methods are tools, public attributes are state) and holding only JSON data, so
a task's `initial_state` is the object's attributes as they are. An episode copies that
dict (episodes never share state) and runs on the shared `ClassEpisode` core.

    DOMAINS            domain name -> simulator class
    BuiltinEnvironment the environment family "builtin"
    seed_tasks(...)    the procedurally generated seed tasks (see seeds.py)
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

import orjson

from rodscli.envs.base import (
    ArgumentCheck,
    Environment,
    Episode,
    argument_check,
    state_hash,
    tool_name,
)
from rodscli.envs.builtin.retail import Retail
from rodscli.envs.builtin.workspace import Workspace
from rodscli.envs.pyclass import ClassEpisode, method_schema, public_methods
from rodscli.errors import InputError

DOMAINS: dict[str, type] = {"retail": Retail, "workspace": Workspace}


@functools.cache
def domain_tools(domain: str) -> tuple[dict, ...]:
    """The OpenAI tool schemas of a domain, built once from its methods' signatures and docstrings."""
    obj = DOMAINS[domain]()
    return tuple(method_schema(n, m) for n, m in sorted(public_methods(obj).items()))


@functools.cache
def _state_keys(domain: str) -> frozenset[str]:
    return frozenset(k for k in vars(DOMAINS[domain]()) if not k.startswith("_"))


@functools.cache
def _argument_checks(domain: str) -> dict[str, ArgumentCheck]:
    return {tool_name(t): argument_check(t) for t in domain_tools(domain)}


class BuiltinEpisode(ClassEpisode):
    """A `ClassEpisode` whose state is pure JSON data, so its snapshot is one orjson round
    trip and its hash needs no copy at all."""

    def _public(self) -> dict:
        return {name: {k: v for k, v in vars(obj).items() if not k.startswith("_")} for name, obj in self.instances.items()}

    def snapshot(self) -> dict:
        return orjson.loads(orjson.dumps(self._public()))

    def snapshot_hash(self) -> str:
        return state_hash(self._public())  # equal to state_hash(self.snapshot()): the state is JSON data

    # synthesis hooks (see Episode): the state is JSON data, saved with orjson (several
    # times faster than pickle) and shown as it is
    live_views = True

    def save_state(self, owner: str) -> bytes | None:
        try:
            return b"j" + orjson.dumps(vars(self.instances[owner]))
        except Exception:
            return None

    def state_view(self, owner: str) -> dict:
        return {k: v for k, v in vars(self.instances[owner]).items() if not k.startswith("_")}


def new_episode(domain: str, state: dict) -> BuiltinEpisode:
    """An episode of `domain` in (a private copy of) `state`."""
    cls = DOMAINS.get(domain)
    if cls is None:
        raise InputError(f"unknown builtin domain {domain!r} (known: {', '.join(DOMAINS)})", field="domain")
    unknown = set(state) - _state_keys(domain)
    if unknown:
        raise InputError(f"unknown {domain} state field(s): {', '.join(sorted(unknown))}", field="initial_state")
    obj = cls()
    # one serialize/parse round trip is a deep copy of JSON data several times faster than copy.deepcopy
    for key, value in orjson.loads(orjson.dumps(state)).items():
        setattr(obj, key, value)
    episode = BuiltinEpisode({cls.__name__: obj}, list(domain_tools(domain)))
    episode._argument_checks = _argument_checks(domain)  # compiled once per domain, read only
    return episode


class BuiltinEnvironment(Environment):
    """Family "builtin": task["domain"] names the simulator, task["initial_state"] is its state."""

    family = "builtin"

    def reset(self, task: dict) -> Episode:
        try:
            return new_episode(task["domain"], task.get("initial_state") or {})
        except InputError as exc:
            exc.where = exc.where or task.get("id")
            raise

    def new_world(self, task: dict, rng: random.Random, others: Callable[[], list[dict]], attempt: int,
                  salt: int = 0) -> tuple[dict, str]:
        """One of the domain's generated worlds (a large one for long_context tasks)."""
        index = rng.randrange(WORLDS)
        return generated_world(task["domain"], task["skill"] == "long_context", index, salt), f"generated:{index}"


WORLDS = 64  # generated worlds per domain and size in one synthesis run (a variant draws one)


@functools.lru_cache(maxsize=4 * WORLDS)
def generated_world(domain: str, large: bool, index: int, salt: int) -> dict:
    """World number `index` of a domain: made once per process, shared read-only by the
    variants that draw it (every episode works on its own copy)."""
    from rodscli.envs.builtin.seeds import domain_module

    return domain_module(domain).world(random.Random(f"rods-synth-world:{salt}:{domain}:{large}:{index}"), large=large)


def seed_tasks(domain: str | None = None, seed: int = 0, per_skill: int | None = None) -> list[dict]:
    """The built-in seed tasks of one domain (or all), deterministic in `seed`."""
    from rodscli.envs.builtin.seeds import seed_tasks as _make

    return _make(domain, seed, per_skill)


__all__ = ["DOMAINS", "BuiltinEnvironment", "BuiltinEpisode", "domain_tools", "new_episode", "seed_tasks"]
