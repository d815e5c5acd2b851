# Entry points: `make demo` (install, then train a teacher and a student on the bundled voice,
# synthesise and evaluate), `make test` (install with the dev extra, then run the tests) and
# `make lint` (ruff, ruff format, shellcheck and mypy).
PYTHON ?= python3
VENV ?= .venv
# CPU wheel by default; set TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
# (or any torch 2.1-2.14) for a GPU build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(TORCH)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash recipes/demo/run.sh

test: install
	$(BIN)/python -m pytest

# The checks a change must pass (also run by .ci/run and by the pre-commit hooks).
PY_SOURCES := wavedistill tests benchmarks recipes
SHELL_SCRIPTS := .ci/run $(wildcard recipes/*.sh recipes/*/*.sh)

lint: install
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/shellcheck $(SHELL_SCRIPTS)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) exp
