# The two commands of the README's quick start are `make dev` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dev test lint unit integration install clean

$(BIN)/broker: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/broker

## Run the broker, a Smithery emulator and a dev identity on loopback.
dev: install
	$(BIN)/broker dev

## Lint, type-check, unit tests, then integration tests (real servers on loopback).
test: install lint unit integration

lint: install
	$(BIN)/ruff check broker tests
	$(BIN)/ruff format --check broker tests
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q -m "not integration"

integration: install
	$(BIN)/pytest -q -m integration

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
