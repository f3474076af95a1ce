# agentmesh: `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help
.SHELLFLAGS := -eu -o pipefail -c

UV ?= $(shell command -v .tools/uv/bin/uv 2>/dev/null || echo .tools/uv/bin/uv)
PYTEST_ARGS ?=

.PHONY: help
help: ## list every target with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: bootstrap
bootstrap: ## install uv, the workspace venv, a Chroma server and redis-server for tests/development
	@scripts/bootstrap.sh

.PHONY: lint
lint: bootstrap ## ruff (lint + format check) and mypy --strict
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy

.PHONY: test
test: bootstrap ## every test tier this machine can run: unit, integration (local processes), e2e (Docker)
	$(UV) run --frozen pytest tests/unit tests/integration $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: bootstrap ## the unit tier only
	$(UV) run --frozen pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: bootstrap ## the integration tier: real redis-server, Celery workers, Chroma, scripted model
	$(UV) run --frozen pytest tests/integration $(PYTEST_ARGS)

.PHONY: dev
dev: bootstrap ## run the whole mesh as local processes (no Docker), with the scripted model
	$(UV) run --frozen python -m tests.support.devmesh
