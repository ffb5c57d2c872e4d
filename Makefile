# Quick start: `make run` (the embedded demo) and `make test` (the whole suite).
# Each creates .venv and installs what it needs first: `run` the library and the demo's
# extra only; `test` the test, deep-learning and bench extras too.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-stamp
TEST_STAMP := $(VENV)/.test-stamp
TEST_EXTRAS ?= test,dl,bench

.PHONY: run test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[$(TEST_EXTRAS)]'
	touch $(TEST_STAMP)

run: $(RUN_STAMP)
	$(BIN)/offloop up

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

pytest: $(TEST_STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

# Ray Serve (the `peer` extra) is large: installed only for the scenarios that need it.
bench: $(TEST_STAMP)
	$(if $(filter-out peer,$(SCENARIO)),,$(BIN)/python -m pip install -q -e '.[peer]' || echo "ray[serve] did not install: the peer scenario will say why")
	$(BIN)/python -m bench $(if $(SCENARIO),--scenario $(SCENARIO)) $(if $(QUICK),--quick) $(if $(PUBLISH),--publish)

clean:
	rm -rf $(VENV) build dist src/*.egg-info
