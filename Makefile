# The two commands: `make demo` (main job) and `make test` (lint, the test suite, the
# docs build and every notebook). `make docs` builds only the docs and notebooks.
# Both create .venv with the pinned versions when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# make demo DEMO_ARGS="--steps 600 --max-minutes 5": options of `xscale demo`
DEMO_ARGS ?=

.PHONY: demo test lint docs install clean

$(STAMP): setup.cfg pyproject.toml requirements/constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 12), f"Python >= 3.12 needed, $(PYTHON) is {sys.version.split()[0]} (pyenv: a .python-version with 3.12 is in the repo root)"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/xscale demo --output outputs/demo $(DEMO_ARGS)

docs: $(STAMP)
	bash docs/build.sh

lint: $(STAMP)
	$(BIN)/ruff format --check torchgeo_xscale tests benchmarks
	$(BIN)/ruff check torchgeo_xscale tests benchmarks
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest --cov=torchgeo_xscale --cov-report=term:skip-covered $(PYTEST_ARGS)
	bash docs/build.sh

clean:
	rm -rf $(VENV) outputs .pytest_cache .coverage docs/_build
