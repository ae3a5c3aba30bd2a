# bfcl — the paper's setting (RODS, arXiv 2606.19047): BFCL V3 multi-turn, 400 training
# tasks (100 per category) and the other 400 held out, GRPO with G = 16 rollouts per task,
# a Qwen3 checkpoint, the vLLM backend. For GPU machines (not run on CPU):
#   make install TORCH_SPEC=torch && .venv/bin/pip install vllm
#   make loop PIPELINE=bfcl RUN=runs/bfcl POLICY=/path/to/Qwen3-4B-Instruct-2507 ITER=50
# POLICY is required: any Hugging Face checkpoint directory (no model hub is contacted).

TRAIN_TASKS_CMD ?= $(RODS) tasks bfcl --split train --out -
HELDOUT_TASKS_CMD ?= $(RODS) tasks bfcl --split test --out -

POLICY ?= $(error PIPELINE=bfcl needs POLICY=/path/to/a/Qwen3/checkpoint)
BACKEND ?= vllm
# the paper starts RL from the instruct model: no SFT warm start
SFT ?= off

ITER ?= 50
BATCH ?= 64
G ?= 16
TEMPERATURE ?= 1.0
MAX_NEW_TOKENS ?= 1024
MAX_TOKENS ?= 16384

ALPHA_LOW ?= 0.20
ALPHA_HIGH ?= 0.85
TOP_M ?= 32

# paper: 400 seeds, at most P_max = 400 synthetic, beta = 20 % staged injection
SYNTH ?= on
PER_SEED ?= 4
P_MAX ?= 400
INJECT_FRAC ?= 0.2
RETIRE ?= on
FLOOR ?= 0.05

LR ?= 1e-6
TRAIN_ARGS ?= --bf16

EVAL_EVERY ?= 5
EVAL_K ?= 1
