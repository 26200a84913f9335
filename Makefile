# hydrapool: `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help run demo-pool test check lint format typecheck bench bench-postgres bench-redis bench-limiter clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP)

run: $(STAMP) ## create .venv, install, run the demo (durable queue on SQLite)
	$(PY) examples/queue_demo.py

demo-pool: $(STAMP) ## the in-process Pool demo (2,000 simulated HTTP calls)
	$(PY) examples/pool_demo.py

test: $(STAMP) ## create .venv, install, run the whole test suite
	$(PY) -m pytest

lint: $(STAMP) ## ruff format --check and ruff check
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format: $(STAMP) ## apply ruff format and safe fixes
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

typecheck: $(STAMP) ## mypy --strict on src
	$(PY) -m mypy --strict src

check: lint typecheck test ## format, lint, types, tests: the one way to check

bench: $(STAMP) ## run the benchmarks (each prints JSON)
	$(PY) bench/pool.py
	$(PY) bench/workers.py
	$(PY) bench/queue.py

bench-postgres: $(STAMP) ## the PostgreSQL queue against pgqueuer, procrastinate, saq (same run)
	bash bench/postgres_vs_peers.sh

bench-redis: $(STAMP) ## the Redis queue against saq, arq, dramatiq (same run)
	bash bench/redis_vs_peers.sh

bench-limiter: $(STAMP) ## hp.Limiter on every backend: utilisation, overhead, hand-off
	$(PY) bench/limiter.py --backend all --runs 3

clean: ## remove .venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
