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
	$(BIN)/lint-imports

services: $(VENV)/.installed-test
	$(BIN)/python scripts/ensure_postgres.py

# The admin panel's browser tests drive Debian's chromium through Playwright (never `playwright install`).
# It is installed only where it can be (apt-get, as root); elsewhere those tests skip and say how to
# enable them. Under CI=true they must run: there a chromium that cannot be installed fails the build.
browsers:
	@if command -v chromium >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update && apt-get install -y chromium) || { \
			case "$$CI" in true|TRUE|True|1|yes) exit 1;; esac; \
			echo "browsers: apt-get could not install chromium: the browser tests will skip"; }; \
	else \
		case "$$CI" in true|TRUE|True|1|yes) \
			echo "browsers: CI=true needs chromium, and only root with apt-get can install it here" >&2; exit 1;; esac; \
		echo "browsers: no chromium, and no apt-get as root to install it: the browser tests will skip"; \
	fi

# Workers for pytest-xdist: the tests wait on subprocesses, Postgres and sockets as much as they
# compute, so three per core pays (measured on 2 cores: 6 workers beat 4; README.md, Tests),
# at most 8 so that a big machine does not run Postgres out of connections.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(8, 3 * (os.cpu_count() or 1)))")

# Python's bytecode cache stays on even where the environment turns it off (PYTHONDONTWRITEBYTECODE,
# common in containers): without it every worker rewrites the tests' asserts and every migsync
# fork server compiles migsync from source again, run after run (about 4 s of CPU a worker).
pytest: $(VENV)/.installed-test services browsers
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

test: lint pytest

bench: $(VENV)/.installed
	$(BIN)/python bench/apply.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
