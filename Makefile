# agentmesh: `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help
.SHELLFLAGS := -eu -o pipefail -c

UV := .tools/uv/bin/uv
# Compose v2 (`docker compose`) where present, else the standalone docker-compose.
COMPOSE ?= $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; else echo docker-compose; fi)
PYTEST_ARGS ?=
TASK ?= Explain what a prime number is and list the primes below 30
researcher ?= 1
coder ?= 1
sandbox ?= 1
planner ?= 1
SERVICE ?=

.PHONY: help
help: ## list every target with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# --- the mesh in Docker ---------------------------------------------------------------
.PHONY: images
images: ## build every image (official bases with a registry, Debian-built stand-ins without)
	@docker/build-images.sh

.PHONY: up
up: images ## build and start the mesh with the real model; returns when every service is healthy
	@scripts/secrets.sh
	@scripts/mesh-env.sh claude
	@$(COMPOSE) up -d --remove-orphans
	@scripts/wait-healthy.sh $(COMPOSE)
	@$(MAKE) --no-print-directory _next

.PHONY: demo
demo: ## start the mesh with the SCRIPTED model (if not already) and run a sample task
	@if [ "$$(grep -s '^AGENTMESH_MODE=' .env | cut -d= -f2)" != scripted ] || [ -z "$$($(COMPOSE) ps -q orchestrator 2>/dev/null)" ]; then \
	  $(MAKE) --no-print-directory images && scripts/secrets.sh && scripts/mesh-env.sh scripted && \
	  $(COMPOSE) up -d --remove-orphans && scripts/wait-healthy.sh $(COMPOSE); fi
	@echo "demo: the model is SCRIPTED (a stand-in Messages-API server), not Claude."
	$(COMPOSE) exec -T orchestrator orchestrator submit "$(TASK)" --wait
	@echo "demo: the mesh keeps running with the scripted model; 'make up' switches back to Claude."

.PHONY: _next
_next:
	@echo ""
	@echo "agentmesh is up (model mode: $$(grep -s '^AGENTMESH_MODE=' .env | cut -d= -f2)); API on http://127.0.0.1:$${AGENTMESH_API_PORT:-8080}"
	@echo "  dashboard: http://127.0.0.1:$${AGENTMESH_API_PORT:-8080}/ (sign in with the token in secrets/api_token)"
	@echo "  make submit TASK=\"...\"        or: $(COMPOSE) exec orchestrator orchestrator submit \"...\" --wait"
	@echo "  make scale researcher=3 coder=2 planner=2"
	@echo "  make logs SERVICE=researcher    make ps    make down"
	@echo "  the API wants the bearer token in secrets/api_token (the CLI reads it; curl -H \"Authorization: Bearer \$$(cat secrets/api_token)\" ...)"

.PHONY: down
down: ## stop and remove the mesh's containers (data volumes are kept)
	@if [ -f .env ]; then $(COMPOSE) --profile scripted --profile monitoring down --remove-orphans; else echo "down: no .env, nothing started"; fi

.PHONY: clean
clean: ## stop the mesh and delete its volumes (task records, memory, traces)
	@if [ -f .env ]; then $(COMPOSE) --profile scripted --profile monitoring down --remove-orphans --volumes; fi

.PHONY: trace
trace: ## show a task's span tree: make trace ID=<task id>
	$(COMPOSE) exec -T orchestrator orchestrator trace "$(ID)" --wait 10

.PHONY: monitoring
monitoring: ## add Flower (Celery's dashboard) on http://127.0.0.1:5555
	@$(COMPOSE) --profile monitoring up -d flower
	@scripts/wait-healthy.sh $(COMPOSE) --profile monitoring

.PHONY: tracing-ui
tracing-ui: ## add a Jaeger UI on http://127.0.0.1:16686 (needs a registry: official collector image)
	@grep -qx 'COLLECTOR_FLAVOR=contrib' build/images.env || \
	  { echo "tracing-ui needs the official collector image: run make up where a registry is reachable"; exit 1; }
	@$(COMPOSE) -f compose.yaml -f compose.tracing-ui.yaml up -d --remove-orphans
	@scripts/wait-healthy.sh $(COMPOSE) -f compose.yaml -f compose.tracing-ui.yaml

.PHONY: ps
ps: ## show the mesh's containers and their health
	@$(COMPOSE) ps

.PHONY: logs
logs: ## follow the logs (SERVICE=name for one service)
	@$(COMPOSE) logs -f --tail=100 $(SERVICE)

.PHONY: submit
submit: ## submit TASK="..." through the CLI in the orchestrator container and wait
	$(COMPOSE) exec -T orchestrator orchestrator submit "$(TASK)" --wait

.PHONY: scale
scale: ## scale workers, sandboxes and planners: make scale researcher=N coder=M sandbox=K planner=P
	@$(COMPOSE) up -d --no-recreate --scale researcher=$(researcher) --scale coder=$(coder) --scale sandbox=$(sandbox) --scale planner=$(planner)
	@scripts/wait-healthy.sh $(COMPOSE)
	@$(COMPOSE) exec -T orchestrator orchestrator workers

.PHONY: audit
audit: ## prove the running mesh's hardening from inside every agent container
	@scripts/audit.sh $(COMPOSE)

# --- development ------------------------------------------------------------------------
.PHONY: bootstrap
bootstrap: ## install uv, the workspace venv, a Chroma server and redis-server for tests/development
	@scripts/bootstrap.sh

.PHONY: lint
lint: bootstrap ## ruff (lint + format check) and mypy --strict
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy

.PHONY: test
test: bootstrap ## every tier this machine can run: unit, integration (local processes), e2e (Docker, a short fuzz run included)
	$(UV) run --frozen pytest tests/unit tests/integration $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-e2e

.PHONY: test-unit
test-unit: bootstrap ## the unit tier only
	$(UV) run --frozen pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: bootstrap ## the integration tier: real redis-server, Celery workers, Chroma, scripted model
	$(UV) run --frozen pytest tests/integration $(PYTEST_ARGS)

.PHONY: test-e2e
test-e2e: bootstrap images ## the e2e tier against the real compose mesh (always torn down)
	@status=0; AGENTMESH_COMPOSE="$(COMPOSE)" $(UV) run --frozen pytest tests/e2e $(PYTEST_ARGS) || status=$$?; \
	  $(COMPOSE) -p $${AGENTMESH_E2E_PROJECT:-agentmesh-e2e} --profile scripted down --remove-orphans --volumes >/dev/null 2>&1 || true; \
	  exit $$status

.PHONY: fuzz
fuzz: bootstrap images ## the long fuzz tier: 10,000 junk broker messages + 10,000 random API requests while real tasks run; prints the figures
	@status=0; AGENTMESH_COMPOSE="$(COMPOSE)" AGENTMESH_FUZZ_MESSAGES=$${AGENTMESH_FUZZ_MESSAGES:-10000} \
	  AGENTMESH_FUZZ_REQUESTS=$${AGENTMESH_FUZZ_REQUESTS:-10000} AGENTMESH_FUZZ_TASKS=$${AGENTMESH_FUZZ_TASKS:-10} \
	  $(UV) run --frozen pytest tests/e2e/test_fuzz.py -s $(PYTEST_ARGS) || status=$$?; \
	  $(COMPOSE) -p $${AGENTMESH_E2E_PROJECT:-agentmesh-e2e} --profile scripted down --remove-orphans --volumes >/dev/null 2>&1 || true; \
	  exit $$status

.PHONY: dev
dev: bootstrap ## run the whole mesh as local processes (no Docker), with the scripted model
	$(UV) run --frozen python -m tests.support.devmesh

.PHONY: soak
soak: bootstrap ## hundreds of tasks through replicas while workers are SIGKILLed at random (long)
	$(UV) run --frozen python -m tests.soak.run

.PHONY: bench
bench: bootstrap ## performance as ratios measured in one run; PNGs in build/bench/ (BENCH_ARGS="--figures dispatch,...")
	$(UV) run --frozen python -m tests.bench.run $(BENCH_ARGS)
