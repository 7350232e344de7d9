# cx-platform: every workflow starts here. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
UV := .tools/uv/bin/uv
PY := .venv/bin/python
STACK := deploy/local/stack.sh
GEN := services/common/gen

.PHONY: help install protos check-protos lint fmt typecheck up down status test unit integration chaos demo bench clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(UV):
	python3 -m venv .tools/uv
	.tools/uv/bin/pip install -q uv==$(UV_VERSION)

.venv/.synced: $(UV) pyproject.toml uv.lock
	UV_PYTHON_DOWNLOADS=never $(UV) sync --frozen
	@touch $@

install: .venv/.synced ## Create the virtualenv from the lock file and fetch Kafka, Redis and Alertmanager
	@bash $(STACK) install

protos: .venv/.synced ## Generate Python code and type stubs from protos/ (the only way)
	bash scripts/gen-protos.sh $(GEN)

check-protos: .venv/.synced ## Fail when the protos are not buf-lint clean or generated code drifted
	.venv/bin/buf lint protos
	@tmp=$$(mktemp -d) && bash scripts/gen-protos.sh $$tmp >/dev/null && \
	  if diff -r -x __pycache__ $$tmp/cx $(GEN)/cx >/dev/null; then echo "generated code matches protos/"; \
	  else echo "generated code drifted from protos/: run 'make protos'"; diff -r -x __pycache__ $$tmp/cx $(GEN)/cx | head -20; rm -rf $$tmp; exit 1; fi; rm -rf $$tmp

fmt: .venv/.synced ## Format and fix lint where safe
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

lint: .venv/.synced check-protos ## ruff, ruff format --check, buf lint, mypy
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy services tests bench

up: install ## Start Kafka, Redis, Alertmanager and every service in the background (idempotent)
	@bash $(STACK) up

down: ## Stop what `make up` started
	@bash $(STACK) down

status: ## Show what is running
	@bash $(STACK) status

unit: .venv/.synced ## Unit tests only (no broker)
	.venv/bin/pytest -m "not integration"

test: install lint ## Install, start the stack, run unit and integration tests, stop what it started
	@bash scripts/with-stack.sh .venv/bin/pytest

chaos: install ## Every test, the slow fault suite included (the broker and Redis killed mid-stream)
	@bash scripts/with-stack.sh .venv/bin/pytest -m "chaos or not chaos" -s

demo: install ## Bring the stack up and run the journey generator with a live summary
	@bash $(STACK) up
	$(PY) -m services.demo.journeys $(DEMO_ARGS)

bench: install ## Benchmarks against the real stack (prints events/s, p50/p99, ratios)
	@bash scripts/with-stack.sh $(PY) -m bench

clean: down ## Stop everything and delete local data (var/)
	rm -rf var
