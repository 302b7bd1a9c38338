# Developer commands. `make help` lists them. Everything installs through the project's own files:
# uv (bootstrapped into .tools/ when missing) and uv.lock for Python; scripts/ for system peers.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never

.PHONY: help quickstart install test test-deps lint fmt typecheck bench bench-quick bench-instructions bench-stages bench-scale clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

.tools/bin/uv:
	python3 -m venv .tools && .tools/bin/pip install --quiet uv

install: $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv)  ## install the gateway and its dependencies (.venv)
	$(UV) sync --frozen --compile-bytecode
	@# Byte-compile the project too: where PYTHONDONTWRITEBYTECODE is set (as on CI), every gateway
	@# process and CLI call would otherwise recompile every import (2.6 s → 0.9 s per start, measured).
	.venv/bin/python -m compileall -q -j 0 gateway admin loadtests >/dev/null

quickstart: install  ## run the gateway in front of the bundled echo app (http://127.0.0.1:8080)
	.venv/bin/gateway quickstart

test-deps: install  ## make sure Redis, PostgreSQL and the test peers (nginx, openssl, wrk…) are present
	scripts/ensure-test-deps

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file's tests together in one of them
# (module fixtures start a gateway or a peer once). Most integration time is spent waiting for processes
# that tests start, so more workers than the 2 cores pays: measured in the README ("Tests").
TEST_WORKERS ?= 3
test: test-deps  ## install everything tests need and run the whole suite
	.venv/bin/pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

lint: install  ## ruff, mypy and the layering contract (import-linter, see docs/architecture.md)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/lint-imports --no-cache

fmt: install  ## format the code
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

bench: test-deps  ## the latency guard: signed-in hot path vs direct, nginx, bare proxy; checks loadtests/budget.yaml
	.venv/bin/python -m loadtests.guard

bench-quick: test-deps  ## the CI smoke version of the guard (< 2 minutes, fails only far outside the budget)
	.venv/bin/python -m loadtests.guard --quick

bench-instructions: test-deps  ## the load-proof CI guard: hot-path instructions per request (callgrind) vs budget.yaml
	.venv/bin/python -m loadtests.instruction_guard

bench-stages: install  ## the per-stage CI guard: bytecodes per request of each stage and feature vs budget.yaml (~40 s)
	.venv/bin/python -m loadtests.stage_guard

bench-scale: test-deps  ## one worker's memory and CPU per request with 100,000 sessions and policy lines (~15 min)
	.venv/bin/python -m loadtests.scale

clean:  ## remove the virtualenv and caches
	rm -rf .venv .tools .mypy_cache .ruff_cache .pytest_cache
