# study — the RODS effect measured as the paper measures it: arms x seeds of `make loop` at one
# trajectory budget, then `rods report` over the study (curves with 95% bands across seeds, the
# final held-out table with RODS-minus-static differences and their paired-bootstrap intervals).
#
#   make study STUDY=runs/study ARMS='rods static' SEEDS='0 1 2'
#   make study STUDY_OF=smol STUDY=runs/smol-study ARMS='rods static'   the same on SmolLM2
#
# Included by the Makefile after loop.mk. Every arm x seed is one `make loop` run in
# STUDY/ARM/seedS, so a study resumes like a loop (Ctrl-C, kill -9: run the same command again);
# runs go seed by seed (every arm of seed 0 first), so a study cut short stays balanced.
#
#   STUDY/start/                the shared starting policy (SFT warm start) and its held-out eval
#   STUDY/ARM/seedS/            one loop run (pipelines/loop.mk's layout)
#   STUDY/times.tsv             arm, seed, seconds of each `make loop` call (a resumed run adds a line)
#   STUDY/report/               rods report over the study (index.html, summary.json, study.json)
#
# Every arm starts from the same policy (STUDY/start/setup/policy, one SFT for the whole
# study, whose held-out eval every run copies) and spends the same budget, STUDY_ITER
# iterations x BATCH tasks x G rollouts; the seed changes the batches, the rollouts and
# synthesis, never the start or the held-out tasks.
#
# STUDY_OF is the recipe the arms vary: demo (the tiny policy) or smol (SmolLM2-135M-Instruct,
# pipelines/smol.mk; the static arm is then pipelines/static.mk with STATIC_OF=smol). Each
# recipe has its own study size below; STUDY_* on the command line overrides either.

STUDY ?= runs/study
ARMS ?= rods static random binary no-retire no-inject
SEEDS ?= 0 1 2
STUDY_OF ?= demo
ifeq ($(STUDY_OF),smol)
# SmolLM2 on 2 CPU cores: a run of 2 iterations x 4 tasks x 4 rollouts and a greedy eval of
# 24 held-out tasks (every 4th of the 96) took 30-60 min of one core (measured); the start (conversion
# and two SFT passes, pipelines/smol.mk) ~2 CPU hours once. GRPO at the recipe's lr 1e-5.
STUDY_ITER ?= 2
STUDY_BATCH ?= 4
STUDY_EVAL_EVERY ?= 2
STUDY_START_SETTINGS ?=
STUDY_LR ?= 1e-5
STUDY_HELDOUT_CMD ?= $(RODS) --quiet --seed 99 tasks builtin --per-skill 12 --out - | awk "NR % 4 == 1"
endif
# the budget every arm spends, and how often the held-out tasks are evaluated
STUDY_ITER ?= 16
STUDY_BATCH ?= 8
STUDY_G ?= 4
STUDY_EVAL_EVERY ?= 4
# the starting policy: the demo's setup with the longer warm start (pipelines/demo.mk, SFT_MORE),
# and GRPO's learning rate from it, the demo's (pipelines/demo.mk: steps of the size that kept the
# warm start)
STUDY_START_SETTINGS ?= SFT_MORE=on
STUDY_LR ?= 1e-6
# any other `make loop` setting given on the command line reaches every run (make passes
# command-line variables on to sub-makes), e.g. make study TRAIN_ARGS='--adv-scale none';
# the arm's own settings and the study's (ITER, BATCH, G, LR, ...) win over them
# held-out: 96 tasks (2 domains x 4 skills x 12) of world 99, never trained on
STUDY_HELDOUT_CMD ?= $(RODS) --quiet --seed 99 tasks builtin --per-skill 12 --out -

# each arm is a recipe and settings, never a code fork; each changes one thing of `rods`
ARM_rods := PIPELINE=$(STUDY_OF)
# fixed-data GRPO: no synthesis, no retirement, uniform batches (pipelines/static.mk)
ARM_static := PIPELINE=static STATIC_OF=$(STUDY_OF)
# synthesis seeds drawn at random from the batch's groups instead of the top-phi boundary groups
ARM_random := PIPELINE=$(STUDY_OF) SELECT=random
# the outcome reward (1 iff every turn passes) instead of progress, for training and detection
ARM_binary := PIPELINE=$(STUDY_OF) REWARD=outcome
# synthetic tasks are never retired (mastered, unsolvable, stale)
ARM_no-retire := PIPELINE=$(STUDY_OF) RETIRE=off
# synthesized tasks stay pending: they never enter the pool the batches are drawn from
ARM_no-inject := PIPELINE=$(STUDY_OF) INJECT_FRAC=0

STUDY_START := $(STUDY)/start
study_run = $(STUDY)/$(1)/seed$(2)
# the settings of arm $(1) with seed $(2), as `make loop` arguments
study_args = $(ARM_$(1)) RUN=$(call study_run,$(1),$(2)) SEED=$(2) \
	POLICY=$(abspath $(STUDY_START))/setup/policy START_EVAL=$(abspath $(STUDY_START))/setup/eval.parquet SFT=off \
	ITER=$(STUDY_ITER) BATCH=$(STUDY_BATCH) G=$(STUDY_G) EVAL_EVERY=$(STUDY_EVAL_EVERY) LR=$(STUDY_LR) \
	'HELDOUT_TASKS_CMD=$(STUDY_HELDOUT_CMD)'

.PHONY: study study-start study-report
# the runs are sub-makes of this one, which has made `install` already (-o install: not again)
study-start: | install
	$(MAKE) --no-print-directory -o install loop PIPELINE=$(STUDY_OF) RUN=$(STUDY_START) ITER=0 SEED=0 \
		'HELDOUT_TASKS_CMD=$(STUDY_HELDOUT_CMD)' $(STUDY_START_SETTINGS)

# an unknown arm stops the study before anything runs
ifneq ($(filter study study-%,$(MAKECMDGOALS)),)
$(if $(filter static loop study,$(STUDY_OF))$(if $(wildcard pipelines/$(STUDY_OF).mk),,x),$(error unknown STUDY_OF '$(STUDY_OF)': the recipe the arms vary, e.g. demo or smol (pipelines/NAME.mk)))
$(foreach a,$(ARMS),$(if $(ARM_$(a)),,$(error unknown arm '$(a)' in ARMS: the arms are $(patsubst ARM_%,%,$(filter ARM_%,$(.VARIABLES))))))
endif

# the time of each run: its start in a file, because only the $(MAKE) line runs under make -n
# (a line naming $(MAKE) always runs), so a dry run records nothing
define STUDY_RUN
.PHONY: study-$(1)-$(2)
study-$(1)-$(2): study-start | install
	@mkdir -p $(STUDY) && date +%s > $(STUDY)/.started-$(1)-$(2)
	$$(MAKE) --no-print-directory -o install loop $$(call study_args,$(1),$(2))
	@printf '%s\t%s\t%d\n' $(1) $(2) $$$$(( $$$$(date +%s) - $$$$(cat $(STUDY)/.started-$(1)-$(2)) )) >> $(STUDY)/times.tsv
endef
$(foreach s,$(SEEDS),$(foreach a,$(ARMS),$(eval $(call STUDY_RUN,$(a),$(s)))))

# every arm x seed, in order, then the report over the study
study: $(foreach s,$(SEEDS),$(foreach a,$(ARMS),study-$(a)-$(s))) | install
	$(RODS) $(RODS_FLAGS) report $(STUDY) --study --out $(STUDY)/report
	@echo "report: $(STUDY)/report/index.html"

# the report of a study as it stands (also one still running)
study-report: | install
	$(RODS) $(RODS_FLAGS) report $(STUDY) --study --out $(STUDY)/report
