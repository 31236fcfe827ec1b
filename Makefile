# Vigil: `make help` lists the targets. Everything runs from the project's .venv.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Bytecode is written when a module is first imported, and read by every later start: pip
# compiles nothing at install (most installed modules, torch's and Spark's, are never
# imported: `make setup` takes about half the time), and the project's own modules are
# compiled once, not at each of the many processes the tests start.
unexport PYTHONDONTWRITEBYTECODE

.DEFAULT_GOAL := help
.PHONY: help setup redis demo test test-fast lint ci bench lab notebook-docs clean

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e ".[dev,spark]"
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv with the project installed (.venv/bin/vigil)
	@echo "vigil is installed: $(BIN)/vigil"

redis: $(STAMP) ## Make sure Redis answers at REDIS_URL (starts a local one on loopback if not)
	@$(BIN)/vigil redis

demo: redis ## Run the main job end to end on a simulated world and print a summary
	$(BIN)/python -m vigil.demo

TEST_WORKERS ?= 2

test: redis ## Run the whole test suite (unit, integration, notebooks; TEST_WORKERS=2 test files at a time)
	VIGIL_NOTEBOOK_SMALL=1 $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=40 --nbmake --nbmake-timeout=600 notebooks tests

test-fast: redis ## Unit tests only
	$(BIN)/pytest -m "not integration"

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check vigil flows scoring feature_repo examples tests benchmarks
	$(BIN)/mypy

ci: lint test ## What CI runs (.ci/run calls this)

bench: redis ## Every benchmark beside its target and same-run baseline (bench-results/, about 50 min)
	$(BIN)/python -m benchmarks.features
	$(BIN)/python -m benchmarks.freshness --runs 5
	$(BIN)/python -m benchmarks.freshness --runs 1 --api
	$(BIN)/python -m benchmarks.freshness --runs 3 --declared
	$(BIN)/python -m benchmarks.serving
	$(BIN)/python -m benchmarks.contention
	$(BIN)/python -m benchmarks.cluster_read
	$(BIN)/python -m benchmarks.capacity
	$(BIN)/python -m benchmarks.offline
	$(BIN)/python -m benchmarks.declared
	$(BIN)/python -m benchmarks.declared_serving
	$(BIN)/python -m benchmarks.report

LAB_PORT ?= 8888

lab: $(STAMP) ## JupyterLab on notebooks/ with the project's environment (LAB_PORT=8888)
	$(BIN)/jupyter lab --notebook-dir=notebooks --port=$(LAB_PORT) --no-browser $(if $(filter 0,$(shell id -u)),--allow-root,)

notebook-docs: redis ## Run every notebook and render it with its pictures into docs/notebooks/ (a few minutes)
	$(BIN)/python notebooks/render.py

clean: ## Start over: generated data, the MLflow registry, Vigil's Redis keys, caches (keeps .venv)
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m vigil.forget; fi
	rm -rf data feature_repo/data reports bench-results .pytest_cache .mypy_cache .ruff_cache
	rm -rf mlflow/*.db mlflow/artifacts mlflow/demo mlflow/repos
	@if [ -f .redis/redis-6379.pid ]; then kill $$(cat .redis/redis-6379.pid) 2>/dev/null || true; fi
	rm -rf .redis
