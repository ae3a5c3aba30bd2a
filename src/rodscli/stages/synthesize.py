"""The synthesize stage (`rods synthesize`): verified variants of the selected boundary
tasks. The work is the `rodscli.synth` package, one module per step; this is the stage's
library surface."""

from rodscli.synth import REASONS, SynthesizeOptions, selected_seeds, synthesize

__all__ = ["REASONS", "SynthesizeOptions", "selected_seeds", "synthesize"]
