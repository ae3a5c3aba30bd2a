"""What a writer is: how an accepted candidate's user turns are written."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rodscli.synth.execute import Execution
    from rodscli.synth.plan import Plan


class Writer(ABC):
    """Writes the user turns of accepted candidates.

    `turns` writes one candidate's turns when it is accepted (from its plan and executed
    calls, deterministic in `rng`); `revise` may then rewrite all accepted candidates in
    one batch (a model writer) and returns its counts for the stats. A new writer is one
    subclass, registered by its `name` in `rodscli.synth.write.WRITERS`; it is made from
    the run's options (`SynthesizeOptions`).
    """

    name = ""

    def __init__(self, opts: Any = None):
        self.opts = opts

    @abstractmethod
    def turns(self, plan: Plan, run: Execution, rng: random.Random) -> list[str]:
        """The candidate's user turns, one per turn of its plan."""

    def revise(self, tasks: list[dict]) -> dict:
        """Rewrite the accepted tasks in place; counts for the stats ({}: nothing to tell)."""
        return {}
