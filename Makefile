# Entry points: `make demo` (install, then train a teacher and a student on the bundled voice,
# synthesise and evaluate), `make test` (install with the dev extra, then run the tests) and
# `make lint` (ruff, ruff format, shellcheck and mypy).
PYTHON ?= python3
VENV ?= .venv
# The torch release is pinned in constraints.txt, read by every install (here, .ci/run, the
# Dockerfiles). The wheel comes from PyPI unless TORCH_INDEX names another index, e.g.
# TORCH_INDEX=https://download.pytorch.org/whl/cu126 for a CUDA 12.6 build.
TORCH_INDEX ?=
BIN := $(VENV)/bin

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c constraints.txt torch $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -c constraints.txt -e '.[dev]'
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
