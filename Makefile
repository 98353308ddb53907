# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11) on PATH, or run: make PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# A local gate on the shipped plan: enforcement on, SQLite under var/, a generated token.
run: $(STAMP)
	@mkdir -p var
	@test -s var/api-token || $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))' > var/api-token
	@test -s var/webhook-secret || $(BIN)/python -c 'import secrets; print("whsec_" + secrets.token_hex(24))' > var/webhook-secret
	$(BIN)/plangate lint plans.yaml
	@export SUBSCRIPTION_ENABLED=$${SUBSCRIPTION_ENABLED:-true} \
	       PLANGATE_DATABASE=$${PLANGATE_DATABASE:-var/plangate.sqlite3} \
	       PLANGATE_API_TOKEN=$${PLANGATE_API_TOKEN:-$$(cat var/api-token)} \
	       STRIPE_WEBHOOK_SECRET=$${STRIPE_WEBHOOK_SECRET:-$$(cat var/webhook-secret)} \
	       PLANGATE_PORT=$${PLANGATE_PORT:-8080}; \
	$(BIN)/plangate migrate && \
	echo "" && \
	echo "API token (also in var/api-token): $$PLANGATE_API_TOKEN" && \
	echo "Stripe webhook secret (also in var/webhook-secret): $$STRIPE_WEBHOOK_SECRET" && \
	echo "Try:  curl -s -X POST http://127.0.0.1:$$PLANGATE_PORT/v1/check -H \"Authorization: Bearer $$PLANGATE_API_TOKEN\" -d '{\"subject\": \"alice\", \"meter\": \"requests\"}'" && \
	echo "Simulate Stripe (another shell, same directory):  $(BIN)/plangate stripe-simulate --url http://127.0.0.1:$$PLANGATE_PORT" && \
	echo "Stop with Ctrl-C." && echo "" && \
	exec $(BIN)/plangate serve

test: $(STAMP)
	$(BIN)/python -m pytest

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
	rm -rf $(VENV) var .pytest_cache
