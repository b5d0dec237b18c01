# The two set-up commands: `make run` and `make test`. Each bootstraps .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck check bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/agentmx serve

# Tests run in parallel: most of their time is spent waiting on servers, schedules and retries,
# so two workers per CPU, at most four (each starts its own SQLite and PostgreSQL servers).
# On 2 CPUs: 5:19 with four workers, 7:00 with two. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(4, 2 * len(os.sched_getaffinity(0))))')

# src is compiled once first: with PYTHONDONTWRITEBYTECODE set, each server a test starts compiled it again.
test: $(STAMP)
	$(BIN)/python -m compileall -q src
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
