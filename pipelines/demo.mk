# demo — the embedded default: the tiny policy on the built-in domains, on CPU.
#   make loop PIPELINE=demo RUN=runs/demo      (or `make demo`, which also writes the report)
# `rods init-policy` makes the tiny policy, SFT warms it up on part of the built-in seed
# tasks, then the RODS loop trains it with GRPO while synthesizing tasks on its boundary.
# Every setting can be overridden on the command line: make demo ITER=10 G=8.

# tasks: the built-in seeds; every 10th is held out for eval, SFT sees a third of the rest
TRAIN_TASKS_CMD ?= $(RODS) tasks builtin --out - | awk 'NR % 10 != 0'
HELDOUT_TASKS_CMD ?= $(RODS) tasks builtin --out - | awk 'NR % 10 == 0'
SFT_TASKS_FILTER ?= awk 'NR % 3 == 0'

# policy: the embedded tiny model (POLICY= a checkpoint directory to start from another)
POLICY ?=
BACKEND ?= hf
SFT ?= on
SFT_ARGS ?=

# loop size: ITER iterations of BATCH tasks x G rollouts
ITER ?= 6
BATCH ?= 8
G ?= 8
TEMPERATURE ?= 1.0
MAX_NEW_TOKENS ?= 96
MAX_TOKENS ?= 1536

# boundary detection (DESIGN.md section 5)
ALPHA_LOW ?= 0.20
ALPHA_HIGH ?= 0.85
TOP_M ?= 4

# synthesis budget and buffer (sections 6-7)
SYNTH ?= on
PER_SEED ?= 2
P_MAX ?= 400
INJECT_FRAC ?= 0.2
RETIRE ?= on
FLOOR ?= 0.05

# GRPO
LR ?= 1e-4

# held-out eval after every iteration, greedy
EVAL_EVERY ?= 1
EVAL_K ?= 1
