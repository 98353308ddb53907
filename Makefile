# Two commands do everything on a fresh machine: `make run` and `make test`.
SUPPORTED := 3.13 3.12 3.11
# The newest supported Python found (or PYTHON=...): one on PATH that runs (a pyenv shim of a version pyenv has not
# selected is on PATH but does not run), else one pyenv has installed.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for v in $(SUPPORTED); do \
	  if python$$v -c '' >/dev/null 2>&1; then echo python$$v; exit; fi; \
	  for p in $$(pyenv root 2>/dev/null)/versions/$$v*/bin/python$$v; do \
	    if [ -x "$$p" ]; then echo "$$p"; exit; fi; done; done)
endif
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Settings of `make run`: the environment wins, then config.env (where there is one: a file named with --env-file
# must exist), then make run's defaults (var/run.env).
RUN_ENV := $(if $(wildcard config.env),--env-file config.env) --env-file var/run.env

.PHONY: run test lint bench clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "need Python 3.11, 3.12 or 3.13 (python3.13, python3.12 or python3.11 on PATH, or installed by pyenv), or: make PYTHON=/path/to/python3"; exit 2; }
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null || \
	  { echo "$(PYTHON) is not Python 3.11, 3.12 or 3.13 (make PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	@echo "installing plangate and what it needs into $(VENV) (about a minute the first time; quiet meanwhile)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# A local gate on the shipped plan: enforcement on, SQLite under var/, generated tokens and webhook secret
# (var/api-token, var/admin-token, var/webhook-secret), each a default that config.env or the environment overrides.
run: $(STAMP)
	@$(BIN)/python -m plangate.server.local prepare
	@$(BIN)/python -m plangate.server.local lint
	$(BIN)/plangate migrate $(RUN_ENV)
	@$(BIN)/python -m plangate.server.local hint
	@exec $(BIN)/plangate serve $(RUN_ENV)

# The console's browser tests need Debian's chromium and chromium-driver: tools/need-browser installs them.
# The suite runs on TEST_WORKERS processes (pytest-xdist; TEST_WORKERS=0: in this one), its tests handed out one
# by one: grouped by file, schemathesis's tests (which share a node id) ran one per function, not per operation.
TEST_WORKERS ?= 2
test: $(STAMP)
	@tools/need-browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# The repository's static checks (also .pre-commit-config.yaml's): ruff, mypy (tools/typecheck), the shipped plan.
lint: $(STAMP)
	$(BIN)/ruff check .
	PYTHON=$(BIN)/python tools/typecheck
	$(BIN)/plangate lint --strict plans.yaml

# Every benchmark of bench/, then one table (also bench/results/report.md) and a latency chart
# (bench/results/latency.png); how to read them: bench/README.md. The bench extra brings matplotlib.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

# wrk drives the HTTP benches: a Python client needs a core of its own to keep up, and on two cores it
# becomes the limit, which pulls every gate/bare ratio towards 1. Installed as .ci/run installs PostgreSQL.
bench: $(BENCH_STAMP)
	@command -v wrk >/dev/null || { echo "bench: installing wrk (Debian package), the HTTP load generator"; \
	  (apt-get install -y -qq wrk || (apt-get update -qq && apt-get install -y -qq wrk)) >/dev/null 2>&1 || \
	  echo "bench: could not install wrk; the HTTP benches fall back to a Python client"; }
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .venv-ci-*/ var .pytest_cache
