# migsync: `make demo` shows the main job, `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint services browsers pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/migsync demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check migsync tests bench scripts
	$(BIN)/ruff format --check migsync tests bench scripts
	$(BIN)/mypy

services: $(VENV)/.installed-test
	$(BIN)/python scripts/ensure_postgres.py

# The admin panel's browser tests drive Debian's chromium through Playwright (never `playwright install`).
browsers:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

pytest: $(VENV)/.installed-test services browsers
	$(BIN)/python -m pytest

test: lint pytest

bench: $(VENV)/.installed
	$(BIN)/python bench/apply.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
