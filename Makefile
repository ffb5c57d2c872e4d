# Quick start: `make run` (the embedded demo) and `make test` (the whole suite).
# Both create .venv and install the project with its extras first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= test,dl,bench

.PHONY: run test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/offloop up

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[peer]' || echo "ray[serve] did not install: the peer scenario will say why"
	$(BIN)/python -m bench $(if $(SCENARIO),--scenario $(SCENARIO)) $(if $(QUICK),--quick) $(if $(PUBLISH),--publish)

clean:
	rm -rf $(VENV) build src/*.egg-info
