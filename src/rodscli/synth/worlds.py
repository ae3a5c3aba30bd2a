"""The worlds variants run in: each family makes a fresh one for a task
(`Environment.new_world`); those that cannot make worlds reuse the initial states of known
tasks like it, collected here."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable

import orjson

from rodscli.envs.base import environment_for, state_hash


def _kind(task: dict) -> tuple:
    return (task["env"], task["domain"], orjson.dumps(task.get("env_config") or {}, option=orjson.OPT_SORT_KEYS))


class WorldPool:
    """Known initial states by (env, domain, env_config), each distinct state once, in the
    order of their hashes (the pool does not depend on task order). A kind's states are
    compared only when a variant first asks for them."""

    def __init__(self, tasks: Iterable[dict]):
        self._tasks: dict[tuple, list[dict]] = defaultdict(list)
        self._pools: dict[tuple, list[dict]] = {}
        for t in tasks:
            self._tasks[_kind(t)].append(t)

    def like(self, task: dict) -> list[dict]:
        """The distinct initial states of known tasks of the same kind as `task`."""
        key = _kind(task)
        pool = self._pools.get(key)
        if pool is None:
            states: dict[str, dict] = {}
            for t in self._tasks.get(key, ()):
                states.setdefault(state_hash(t["initial_state"]), t["initial_state"])
            pool = self._pools[key] = [states[h] for h in sorted(states)]
        return pool

    def new_world(self, seed: dict, rng: random.Random, attempt: int, salt: int = 0) -> tuple[dict, str]:
        """A fresh initial state for a variant of `seed` (its family's `new_world`), and where it came from."""
        return environment_for(seed).new_world(seed, rng, lambda: self.like(seed), attempt, salt)
