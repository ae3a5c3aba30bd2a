# rods — set-up, tests and the online loop. Every target installs what it needs first.
#   make demo            the embedded default, end to end (tiny policy, built-in domains, CPU)
#   make test            the test suite (what CI runs)
#   make loop ITER=50 RUN=runs/NAME PIPELINE=demo   the RODS loop, resumable
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
	@sed -n '1,5p' Makefile

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
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@# BFCL's simulators and tasks: its own dependency pins are heavy and not needed for them
	$(BIN)/pip install -q --disable-pip-version-check --no-deps bfcl-eval mpmath
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

DEMO_RUN ?= runs/compare/demo
STATIC_RUN ?= runs/compare/static
COMPARE_OUT ?= runs/compare/report

.PHONY: demo static bfcl compare
# the README's main command: the embedded default end to end, from a fresh clone
# (RUN defaults to runs/PIPELINE; settings come from pipelines/PIPELINE.mk)
demo static bfcl: install
	$(MAKE) --no-print-directory loop PIPELINE=$@

# RODS against fixed-data GRPO with the same trajectory budget, in one report; the static
# run starts from the demo run's warm-started policy (the same start, one SFT instead of two)
compare: install
	$(MAKE) --no-print-directory loop PIPELINE=demo RUN=$(DEMO_RUN)
	$(MAKE) --no-print-directory loop PIPELINE=static RUN=$(STATIC_RUN) POLICY=$(abspath $(DEMO_RUN))/setup/policy SFT=off
	$(RODS) $(RODS_FLAGS) report $(DEMO_RUN) $(STATIC_RUN) --name rods --name static --out $(COMPARE_OUT)
	@echo "report: $(COMPARE_OUT)/index.html"
