# demo — the embedded default: the tiny policy on the built-in domains, on CPU.
#   make loop PIPELINE=demo RUN=runs/demo      (or `make demo`, which also writes the report)
# `rods init-policy` makes the tiny policy, SFT warms it up on part of the built-in seed
# tasks, then the RODS loop trains it with GRPO while synthesizing tasks on its boundary.
# Every setting can be overridden on the command line: make demo ITER=10 G=8.

# tasks: the 480 built-in seeds; every 10th is kept out of training (48) and half of those
# (every 20th: 24 tasks) are the held-out eval. SFT sees the 432 training tasks and the
# 1,440 tasks of worlds 1-3 (new worlds and stories: names cannot be memorized, only
# copied from the request)
TRAIN_TASKS_CMD ?= $(RODS) tasks builtin --out - | awk 'NR % 10 != 0'
HELDOUT_TASKS_CMD ?= $(RODS) tasks builtin --out - | awk 'NR % 20 == 0'
SFT_TASKS_FILTER ?= sh -c 'cat && $(RODS) --quiet tasks builtin --worlds 1-3 --no-profile --out -'

# policy: the embedded tiny model (POLICY= a checkpoint directory to start from another)
POLICY ?=
BACKEND ?= hf
SFT ?= on
# one pass over the 1,872 tasks (1,644 steps of 2,048 tokens, cosine from 3e-3), loss on every
# token, ~7.5 min on 2 CPU cores: on the 24 held-out tasks the tiny policy goes from no parseable
# call to valid calls (validity 0.6-0.73) naming the right tool (name precision 0.59-0.67), and
# copies a value once its first token is right; finding that first token in the request comes
# only with more data (SFT_MORE), so it still fails most turns that need calls (docs/results.md)
SFT_ARGS ?= --epochs 1 --lr 3e-3 --sft-tokens all --batch-tokens 2048
# SFT_MORE=on: a longer warm start that goes on from there with one pass on the 8,640 tasks of
# worlds 4-21 (10.2M tokens, 1,340 steps of 8,192 tokens, cosine from 1e-3, loss on every
# token; ~48 min on 2 CPU cores). Measured on 96 held-out tasks of unseen worlds: argument
# accuracy 0.03 -> 0.54, progress 0.088 -> 0.292, 47 of 243 call turns passed instead of 2, 12
# tasks solved end to end instead of 1 (with the loss on the assistant's tokens only, the same
# stage reached 0.171 and 2 tasks)
SFT_MORE ?= off
SFT_MORE_TASKS_CMD ?= $(RODS) --quiet tasks builtin --worlds 4-21 --no-profile --out -
SFT_MORE_ARGS ?= --epochs 1 --lr 1e-3 --sft-tokens all --batch-tokens 8192

# loop size: ITER iterations of BATCH tasks x G rollouts. The tiny policy's prompt is
# ~600 tokens (one line per tool); reference episodes are ~700-1,500 tokens, so
# MAX_TOKENS must stay well above 1,500
ITER ?= 8
BATCH ?= 8
G ?= 4
TEMPERATURE ?= 1.0
MAX_NEW_TOKENS ?= 64
MAX_TOKENS ?= 4096

# boundary detection (docs/architecture.md section 5)
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

# GRPO. From the SFT_MORE policy 1e-4 undid the warm start (held-out progress 0.238 -> 0.137 in 8
# iterations) where 1e-5 kept it (0.238 -> 0.221); from the short warm start 1e-4 keeps 0.083 -> 0.085.
# Those runs' GRPO went on with SFT's AdamW state, which made its steps ~9x smaller than a fresh
# optimizer's at the same rate (bench/grpo_step.py, docs/study.md); GRPO now starts a fresh one
# (train-step --optimizer-state auto), so the rates are a tenth, for steps of the measured size
LR ?= $(if $(filter on,$(SFT_MORE)),1e-6,1e-5)

# held-out eval after every other iteration (and the last), greedy
EVAL_EVERY ?= 2
EVAL_K ?= 1
