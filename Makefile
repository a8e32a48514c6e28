# Two commands for a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test test-fast test-integration test-acceptance services lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-run

## Migrate the embedded SQLite database and start the worker with its status page.
run: $(VENV)/.installed-run
	$(BIN)/alertq db upgrade
	$(BIN)/alertq run

## Bring up PostgreSQL, Alertmanager, Prometheus and Chromium where it can; ruff, mypy,
## import contracts; then the whole pytest suite (all three tiers under tests/), ending with
## its 25 slowest tests (CI has 20 minutes). Two pytest-xdist workers, a file each at a
## time: the long tests mostly wait (a 90 s Alertmanager outage, minute-long keep-alives),
## and each worker has its own PostgreSQL database. schemathesis's items share one test id,
## which xdist would run once instead of once per operation, so they run after, alone.
SCHEMATHESIS := tests/integration/test_api.py::test_api_never_answers_a_server_error
test: services $(VENV)/.installed-test lint
	$(BIN)/pytest -n 2 --dist loadfile --durations=25 --deselect $(SCHEMATHESIS)
	$(BIN)/pytest $(SCHEMATHESIS)

## The unit tier alone: pure tests, no services and no lint, for the edit-test loop.
test-fast: $(VENV)/.installed-test
	$(BIN)/pytest -n 2 tests/unit

## One tier with the services it needs: a real database (integration), or real processes,
## Alertmanager, Prometheus and Chromium (acceptance).
test-integration: services $(VENV)/.installed-test
	$(BIN)/pytest tests/integration

test-acceptance: services $(VENV)/.installed-test
	$(BIN)/pytest tests/acceptance

## Start PostgreSQL if it is down; install the Debian packages the acceptance tests need
## (as root with apt). Whatever stays missing, the tests name (and fail on with CI=true).
services:
	bash scripts/test-services.sh

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

## Every benchmark (about 25 minutes; `bash bench/run_all.sh --quick` for a short pass).
bench: $(VENV)/.installed-test
	bash bench/run_all.sh

clean:
	rm -rf $(VENV) alertq.db alertq.db-wal alertq.db-shm
