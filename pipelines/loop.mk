# The RODS online loop as make rules: one folder per iteration, one file per stage.
#
# Included by the Makefile after the recipe (pipelines/$(PIPELINE).mk), which sets the
# settings with ?=; anything can be overridden on the command line (make loop G=4 LR=1e-4).
#
#   RUN/setup/tasks.jsonl          training seed tasks            (rods tasks ...)
#   RUN/setup/sft_tasks.jsonl      the part of them SFT warms up on
#   RUN/setup/heldout.jsonl        held-out tasks for eval        (rods tasks ...)
#   RUN/setup/init/                first checkpoint               (rods init-policy, or a link to POLICY)
#   RUN/setup/policy/              starting policy: SFT warm start (rods train-step --mode sft)
#   RUN/setup/sft_more_tasks.jsonl with SFT_MORE=on, a second SFT stage's tasks; then
#   RUN/setup/sft_first/           holds the first stage and setup/policy is the second
#   RUN/setup/buffer.parquet       initial buffer                 (rods merge-buffer)
#   RUN/setup/next_batch.parquet   tasks of iteration 000
#   RUN/setup/eval.parquet         held-out eval of the starting policy
#   RUN/iter_NNN/rollouts.parquet  G episodes per batch task      (rods rollout)
#               /scored.parquet                                   (rods score)
#               /groups.parquet    zones, phi, boundary selection (rods detect)
#               /candidates.parquet new verified tasks            (rods synthesize)
#               /buffer.parquet    buffer after the iteration     (rods merge-buffer)
#               /next_batch.parquet tasks of iteration NNN+1
#               /policy/           checkpoint after the update    (rods train-step)
#               /eval.parquet      held-out eval of policy/       (rods eval, every EVAL_EVERY)
#   RUN/report/index.html                                         (rods report)
#
# Every stage writes its output atomically (temp + rename), so a file exists only when its
# stage finished; make's file targets then make an interrupted run (Ctrl-C, kill -9) resume
# at the first missing file. Every stage is deterministic given its inputs and a seed
# derived from SEED and the iteration number (nothing reads the clock), so a resumed run
# ends exactly where an uninterrupted one does.

RUN ?= runs/$(PIPELINE)
ITER ?= 4
SEED ?= 0
RODS ?= $(abspath $(BIN))/rods
# extra global options for every rods call (e.g. --no-validate, --quiet)
RODS_FLAGS ?=
# evaluate the held-out tasks after every EVAL_EVERY-th iteration (and after the last one)
EVAL_EVERY ?= 1
# the starting policy's held-out eval made elsewhere, copied instead of run (a study's shared start)
START_EVAL ?=

# Stage options the recipes set (defaults here are the embedded demo's)
BACKEND ?= hf
G ?= 4
BATCH ?= 8
TEMPERATURE ?= 1.0
MAX_NEW_TOKENS ?= 96
MAX_TOKENS ?= 1024
# the training reward `rods score` writes (progress; outcome = the binary-reward ablation)
REWARD ?= progress
# how detect picks synthesis seeds: phi (the top boundary groups) or random (the ablation)
SELECT ?= phi
ALPHA_LOW ?= 0.20
ALPHA_HIGH ?= 0.85
TOP_M ?= 4
PER_SEED ?= 2
SYNTH ?= on
P_MAX ?= 400
INJECT_FRAC ?= 0.2
# off: `rods merge-buffer --no-retire` (synthetic tasks are never retired; the P_MAX cap stays)
RETIRE ?= on
FLOOR ?= 0.05
LR ?= 1e-5
EVAL_K ?= 1
# the starting checkpoint: empty = `rods init-policy` (the embedded tiny policy)
POLICY ?=
INIT_POLICY_ARGS ?=
SFT ?= on
SFT_ARGS ?=
# an optional second SFT stage on more tasks (another command, other options), from the first
SFT_MORE ?= off
SFT_MORE_TASKS_CMD ?= $(error SFT_MORE=on needs SFT_MORE_TASKS_CMD, a command that writes the tasks as JSONL)
SFT_MORE_ARGS ?=
# free-form extra options per stage
ROLLOUT_ARGS ?=
SCORE_ARGS ?=
DETECT_ARGS ?=
SYNTH_ARGS ?=
MERGE_ARGS ?=
TRAIN_ARGS ?=
EVAL_ARGS ?=

# Scale-out (docs/scale-out.md). train-step runs on NPROC processes per node and NNODES
# nodes through torchrun (one process on one node: plain rods); SHARD none (every process
# holds the model, DDP), full (FSDP2 shards it over all processes) or hybrid (shard within a
# node, replicate across nodes). LAUNCH: torchrun's rendezvous flags for several nodes, the
# same on every node, e.g. --rdzv-backend c10d --rdzv-endpoint node0:29400 --rdzv-id run1
NPROC ?= 1
NNODES ?= 1
SHARD ?= none
LAUNCH ?= $(if $(filter 1,$(NNODES)),--standalone)
TORCHRUN ?= $(abspath $(BIN))/torchrun
# Rollout servers (BACKEND=openai): SERVE_HOOK, when set, is a command run with a checkpoint
# folder as its last word before every rollout and eval of that checkpoint; it makes the
# servers serve it (restart them, or call their reload endpoint) and returns when they do.
SERVE_HOOK ?=

# The recipe says how to write the task files (JSONL): shell commands whose stdout is the
# training tasks, the held-out tasks, and (from the training tasks on stdin) the SFT part.
TRAIN_TASKS_CMD ?= $(error the recipe pipelines/$(PIPELINE).mk sets no TRAIN_TASKS_CMD)
HELDOUT_TASKS_CMD ?= $(error the recipe pipelines/$(PIPELINE).mk sets no HELDOUT_TASKS_CMD)
SFT_TASKS_FILTER ?= cat

# ---------------------------------------------------------------------------------------
# derived names

SETUP := $(RUN)/setup
rods = $(RODS) $(RODS_FLAGS) --seed $(1)
# train-step: the same command under torchrun when it spans several processes
TRAIN_RODS = $(if $(filter-out 1,$(NPROC) $(NNODES)),$(TORCHRUN) --nproc-per-node $(NPROC) --nnodes $(NNODES) $(LAUNCH) -m rodscli.cli,$(RODS))
train_rods = $(TRAIN_RODS) $(RODS_FLAGS) --seed $(1)
SCALE_OPTS = $(if $(filter-out none,$(SHARD)),--shard $(SHARD))
# serve $(1) to the rollout servers first (when a SERVE_HOOK is set)
serve = $(if $(SERVE_HOOK),$(SERVE_HOOK) $(1) &&)
# One word per iteration, n:NNN:PREV:SEED:EVAL:DONE, made by one shell call (make has no
# arithmetic): NNN its folder number, PREV the folder it starts from (setup for n = 0),
# SEED distinct per run seed and iteration (never the clock), EVAL 1 when its policy is
# evaluated on the held-out tasks, DONE = n + 1 (iterations its policy has been trained).
LOOP_PLAN := $(shell for n in $$(seq 0 $$(( $(ITER) - 1 ))); do \
	e=0; if [ $$(( (n + 1) % $(EVAL_EVERY) )) -eq 0 ] || [ $$n -eq $$(( $(ITER) - 1 )) ]; then e=1; fi; \
	p=setup; if [ $$n -gt 0 ]; then p=iter_$$(printf %03d $$(( n - 1 ))); fi; \
	printf '%d:%03d:%s:%d:%d:%d ' $$n $$n $$p $$(( $(SEED) * 100003 + n + 1 )) $$e $$(( n + 1 )); done)
plan = $(word $(2),$(subst :, ,$(1)))

# a checkpoint folder is written as NAME.tmp and renamed, so that it exists only when complete
ckpt_tmp = rm -rf $(1).tmp
ckpt_commit = rm -rf $(1) && mv $(1).tmp $(1)

SCORE_OPTS = --reward $(REWARD) $(SCORE_ARGS)
ROLLOUT_OPTS = --backend $(BACKEND) --group-size $(G) --temperature $(TEMPERATURE) --max-new-tokens $(MAX_NEW_TOKENS) --max-tokens $(MAX_TOKENS) $(ROLLOUT_ARGS)
DETECT_OPTS = --alpha-low $(ALPHA_LOW) --alpha-high $(ALPHA_HIGH) --top-m $(if $(filter on,$(SYNTH)),$(TOP_M),0) --select $(SELECT) $(DETECT_ARGS)
MERGE_OPTS = --batch-size $(BATCH) --inject-frac $(INJECT_FRAC) --p-max $(P_MAX) --floor $(FLOOR) \
	$(if $(filter on,$(RETIRE)),,--no-retire) $(MERGE_ARGS)
SYNTH_OPTS = --per-seed $(if $(filter on,$(SYNTH)),$(PER_SEED),0) $(SYNTH_ARGS)
# the update divides logits by the rollouts' temperature, so that its ratios compare like with like
TRAIN_OPTS = --temperature $(TEMPERATURE) --lr $(LR) $(SCALE_OPTS) $(TRAIN_ARGS)
EVAL_OPTS = --k $(EVAL_K) $(if $(filter 1,$(EVAL_K)),--greedy,--no-greedy --temperature $(TEMPERATURE)) --backend $(BACKEND) --max-new-tokens $(MAX_NEW_TOKENS) --max-tokens $(MAX_TOKENS) $(EVAL_ARGS)

# ---------------------------------------------------------------------------------------
# setup: tasks, starting policy (setup/policy), SFT warm start, initial buffer and batch

# pipes write a temp file that is renamed when the whole pipe succeeded
$(SETUP)/tasks.jsonl: | install
	mkdir -p $(@D) && set -o pipefail && $(TRAIN_TASKS_CMD) > $@.tmp && mv $@.tmp $@

$(SETUP)/heldout.jsonl: | install
	mkdir -p $(@D) && set -o pipefail && $(HELDOUT_TASKS_CMD) > $@.tmp && mv $@.tmp $@

$(SETUP)/sft_tasks.jsonl: $(SETUP)/tasks.jsonl
	set -o pipefail && $(SFT_TASKS_FILTER) < $< > $@.tmp && mv $@.tmp $@

ifeq ($(POLICY),)
$(SETUP)/init: | install
	$(call ckpt_tmp,$@)
	$(call rods,$(SEED)) init-policy --out $@.tmp $(INIT_POLICY_ARGS)
	$(call ckpt_commit,$@)
else
# a checkpoint the user gives is linked, never copied or written to
$(SETUP)/init: $(POLICY)
	mkdir -p $(SETUP) && ln -sfn $(abspath $(POLICY)) $@
endif

ifeq ($(SFT),on)
# the first SFT stage writes setup/policy, or setup/sft_first when a second stage follows
SFT_FIRST := $(SETUP)/$(if $(filter on,$(SFT_MORE)),sft_first,policy)
$(SFT_FIRST): $(SETUP)/init $(SETUP)/sft_tasks.jsonl | install
	$(call ckpt_tmp,$@)
	$(call train_rods,$(SEED)) train-step --mode sft --policy $< --tasks $(SETUP)/sft_tasks.jsonl --out $@.tmp $(SCALE_OPTS) $(SFT_ARGS)
	$(call ckpt_commit,$@)
ifeq ($(SFT_MORE),on)
$(SETUP)/sft_more_tasks.jsonl: | install
	mkdir -p $(@D) && set -o pipefail && $(SFT_MORE_TASKS_CMD) > $@.tmp && mv $@.tmp $@

$(SETUP)/policy: $(SFT_FIRST) $(SETUP)/sft_more_tasks.jsonl | install
	$(call ckpt_tmp,$@)
	$(call train_rods,$(SEED)) train-step --mode sft --policy $< --tasks $(SETUP)/sft_more_tasks.jsonl --out $@.tmp $(SCALE_OPTS) $(SFT_MORE_ARGS)
	$(call ckpt_commit,$@)
endif
else
$(SETUP)/policy: $(SETUP)/init
	ln -sfn init $@
endif

$(SETUP)/buffer.parquet $(SETUP)/next_batch.parquet &: $(SETUP)/tasks.jsonl | install
	$(call rods,$(SEED)) merge-buffer --init-from $< --out $(SETUP)/buffer.parquet --next-batch $(SETUP)/next_batch.parquet --iteration 0 $(MERGE_OPTS)

# START_EVAL (set by a study, pipelines/study.mk): the held-out eval of this run's starting policy
# already made elsewhere (the study's shared start), copied instead of run again, once the
# held-out tasks beside it are checked to be this run's
$(SETUP)/eval.parquet: $(SETUP)/policy $(SETUP)/heldout.jsonl | install
ifeq ($(START_EVAL),)
	$(call serve,$<) $(call rods,$(SEED)) eval --policy $< --tasks $(SETUP)/heldout.jsonl --out $@ --iteration 0 $(EVAL_OPTS)
else
	@cmp -s $(dir $(START_EVAL))heldout.jsonl $(SETUP)/heldout.jsonl || { echo "$(SETUP)/heldout.jsonl: not the held-out tasks of START_EVAL ($(dir $(START_EVAL))heldout.jsonl): its eval cannot stand for this run's start" >&2; exit 2; }
	cp $(START_EVAL) $@.tmp && mv $@.tmp $@
endif

# ---------------------------------------------------------------------------------------
# one iteration
define ITERATION
# $(1) n, $(2) its folder, $(3) the folder whose policy, buffer and batch it starts from,
# $(4) the previous groups (none at n = 0), $(5) its seed, $(6) evaluated?, $(7) n + 1
$(2)/rollouts.parquet: $(3)/next_batch.parquet $(3)/policy | install
	$$(call serve,$(3)/policy) $$(call rods,$(5)) rollout --policy $(3)/policy --tasks $(3)/next_batch.parquet --iteration $(1) --out $$@ $$(ROLLOUT_OPTS)

$(2)/scored.parquet: $(2)/rollouts.parquet $(3)/next_batch.parquet | install
	$$(call rods,$(5)) score --rollouts $$< --tasks $(3)/next_batch.parquet --out $$@ $$(SCORE_OPTS)

$(2)/groups.parquet: $(2)/scored.parquet $(4) | install
	$$(call rods,$(5)) detect --scored $$< $(if $(4),--previous $(4)) --out $$@ $$(DETECT_OPTS)

$(2)/candidates.parquet: $(2)/groups.parquet $(3)/next_batch.parquet $(3)/buffer.parquet | install
	$$(call rods,$(5)) synthesize --groups $$< --tasks $(3)/next_batch.parquet --buffer $(3)/buffer.parquet --iteration $(1) --out $$@ $$(SYNTH_OPTS)

$(2)/buffer.parquet $(2)/next_batch.parquet &: $(3)/buffer.parquet $(2)/groups.parquet $(2)/candidates.parquet | install
	$$(call rods,$(5)) merge-buffer --buffer $(3)/buffer.parquet --groups $(2)/groups.parquet --candidates $(2)/candidates.parquet --out $(2)/buffer.parquet --next-batch $(2)/next_batch.parquet --iteration $(1) $$(MERGE_OPTS)

$(2)/policy: $(3)/policy $(2)/scored.parquet | install
	$$(call ckpt_tmp,$$@)
	$$(call train_rods,$(5)) train-step --policy $(3)/policy --scored $(2)/scored.parquet --out $$@.tmp $$(TRAIN_OPTS)
	$$(call ckpt_commit,$$@)

$(2)/eval.parquet: $(2)/policy $(SETUP)/heldout.jsonl | install
	$$(call serve,$(2)/policy) $$(call rods,$(SEED)) eval --policy $(2)/policy --tasks $(SETUP)/heldout.jsonl --out $$@ --iteration $(7) $$(EVAL_OPTS)

LOOP_TARGETS += $(2)/buffer.parquet $(2)/policy $(if $(filter 1,$(6)),$(2)/eval.parquet)
endef

LOOP_TARGETS := $(SETUP)/eval.parquet
$(foreach p,$(LOOP_PLAN),$(eval $(call ITERATION,$(call plan,$(p),1),$(RUN)/iter_$(call plan,$(p),2),$(RUN)/$(call plan,$(p),3),$(if $(filter-out setup,$(call plan,$(p),3)),$(RUN)/$(call plan,$(p),3)/groups.parquet),$(call plan,$(p),4),$(call plan,$(p),5),$(call plan,$(p),6))))

# ---------------------------------------------------------------------------------------
# entry points

.PHONY: loop loop-report
# every iteration's buffer, checkpoint and evals, then the report (rewritten each time: cheap)
loop: $(LOOP_TARGETS) | install
	$(RODS) $(RODS_FLAGS) report $(RUN) --out $(RUN)/report
	@echo "report: $(RUN)/report/index.html"

# the report of a run as it stands (also one still running)
loop-report: | install
	$(RODS) $(RODS_FLAGS) report $(RUN) --out $(RUN)/report

# a recipe that fails after its command wrote the target must not leave it behind
.DELETE_ON_ERROR:
