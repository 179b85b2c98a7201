# nextbest — the two set-up commands are `make run` and `make test`.
# Everything else here is what they are made of.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_VENV := .dev/bench/venv
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?=

.PHONY: help install tools asyncapi up down status lint typecheck unit integration e2e test run bench bench-cost clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) is missing (Python 3.11+ is needed)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv and install nextbest with its dev tools

tools: ## promtool, helm, checkov, kubernetes-validate, the AsyncAPI parser, chromium, kcat: installed once
	@bash deploy/tools/install.sh

asyncapi: $(STAMP) ## write src/nextbest/schemas/asyncapi.json (served at /asyncapi.json) from docs/asyncapi.yaml
	$(BIN)/python deploy/tools/asyncapi/bundle.py
	node deploy/tools/asyncapi/validate.mjs docs/asyncapi.yaml src/nextbest/schemas/asyncapi.json

up: $(STAMP) ## start local Kafka (9092) and Redis (6379), without Docker
	$(BIN)/nextbest dev up

down: $(STAMP) ## stop what `make up` started
	$(BIN)/nextbest dev down

status: $(STAMP) ## is the local stack running?
	$(BIN)/nextbest dev status

lint: $(STAMP) ## ruff: lint and formatting
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP) ## mypy --strict on src/
	$(BIN)/mypy --strict src

unit: $(STAMP) ## pure tests, no services
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP) ## against a real Kafka and Redis (brought up when needed)
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

e2e: $(STAMP) ## the processes as users start them
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

test: $(STAMP) tools ## lint, typecheck and every test tier against real services
	@bash deploy/local/with-services.sh $(MAKE) --no-print-directory lint typecheck unit integration e2e

run: $(STAMP) ## the whole demo stack: Kafka, Redis and the worker (Ctrl-C stops it all)
	@bash deploy/local/run-demo.sh

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e '.[bench]'
	@touch $@

bench: $(BENCH_STAMP) ## floor vs nextbest vs Quix Streams, side by side (~30 min; BENCH_ARGS=--quick)
	$(BENCH_VENV)/bin/python -m bench.compare $(BENCH_ARGS)

bench-cost: $(STAMP) ## what faust's per-record path costs here, beside nextbest's batch path (~3 min)
	$(BIN)/python -m bench.faust_cost

soak: $(STAMP) ## load + faults + the oracle's verdict (SOAK_MINUTES, default 10); bench/results/soak.md
	$(BIN)/python -m bench.soak

clean: ## remove the virtualenv, caches and local service data
	-$(BIN)/nextbest dev down 2>/dev/null
	rm -rf $(VENV) .dev .mypy_cache .ruff_cache .pytest_cache .hypothesis data
