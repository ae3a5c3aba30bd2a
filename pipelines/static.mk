# static — the paper's main baseline: fixed-data GRPO. The same as demo (or the recipe
# STATIC_OF names: same tasks, SFT warm start, batch, G, iterations: the same trajectory
# budget) with synthesis and buffer changes switched off: no synthesized tasks, no
# retirement, and batches drawn uniformly from the fixed seed pool (a sampling floor of 1
# makes every task's weight equal).
#   make loop PIPELINE=static RUN=runs/static
#   make loop PIPELINE=static STATIC_OF=smol RUN=runs/smol-static
SYNTH ?= off
RETIRE ?= off
FLOOR ?= 1.0
STATIC_OF ?= demo
include pipelines/$(STATIC_OF).mk
