# The two Quickstart commands are `make demo` and `make test`; everything else supports them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# PyPI's torch wheel for Linux is the CUDA build (several GB). On a machine without an NVIDIA GPU take the
# CPU build: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
MODEL_NAME ?= celltype-demo
PORT ?= 8000

.PHONY: setup demo test lint bench stack clean

$(BIN)/celltype: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/celltype  ## create .venv with torch (TORCH_INDEX=... for the CPU build) and the project

demo: setup  ## train on the bundled data, register, promote, then serve on :$(PORT)
	bash scripts/demo.sh

test: setup  ## the full test suite (starts PostgreSQL if needed; installs Debian's chromium for the page tests)
	@if command -v pg_isready >/dev/null 2>&1; then bash scripts/ensure_postgres.sh || test -z "$$CI"; \
	elif test -n "$$CI"; then echo "make test: PostgreSQL (pg_isready) is missing; CI requires it" >&2; exit 1; \
	else echo "make test: PostgreSQL is not installed here; the integration tests will be skipped (CI=true requires them)"; fi
	bash scripts/ensure_chromium.sh || test -z "$$CI"  # on a laptop without root the browser tests skip
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/python -m ruff check .

bench: setup  ## all benchmarks; results in docs/benchmarks.md
	$(BIN)/python -m benchmarks

stack: setup  ## PostgreSQL + mlflow server + trainer + service from local processes (scripts/stack.sh down stops it)
	bash scripts/stack.sh up

clean:
	rm -rf mlruns mlartifacts mlflow.db .pytest_cache .ruff_cache outputs
