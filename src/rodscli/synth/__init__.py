"""Skill-aligned resampling of boundary tasks (`rods synthesize`; docs/synthesis.md).

For each seed task, new tasks x' are made whose profile Phi(x') matches Phi(seed) while the
world, the entities and the wording are new. One module per step:

    plan.py       the seed's reference read as a plan: each argument bound to a source
                  (flow from an earlier result, an entity of the live state, a literal, kept)
    paths.py      JSON paths into states and results (where a value is, what a pattern matches)
    graph.py      the API graph mined from known tasks: literal values, flow edges
    worlds.py     the world a variant runs in (each family's `Environment.new_world`)
    ground.py     a step's arguments chosen in the live state of the new world
    states.py     owner states as bytes (undo, remembered calls), views to ground in
    execute.py    the plan grounded and run with bounded repair
    filters.py    the checks a candidate must pass (trivial, near-duplicate, Phi, replay)
    write/        the user turns: template (deterministic) or llm (a policy rewrites)
    teacher/      a teacher model behind a chat server (--teacher-url): Rewrite, Critique and
                  Augment agents over the accepted candidates (docs/teacher.md)
    synthesizer.py  `synthesize()`: the steps composed, per seed and attempt

The synthesizer names no environment family: what it needs from one (a fresh world, the
owner a tool runs on, each owner's state as bytes and as JSON data) is the environment
protocol in `rodscli.envs.base`. Deterministic in the options' seed.
"""

from rodscli.synth.filters import DuplicateIndex, call_keys
from rodscli.synth.synthesizer import (
           REASONS,
           SynthesizeOptions,
           Synthesizer,
           selected_seeds,
           synthesize,
)
from rodscli.synth.write import WRITERS

__all__ = ["REASONS", "WRITERS", "DuplicateIndex", "SynthesizeOptions", "Synthesizer", "call_keys",
           "selected_seeds", "synthesize"]
