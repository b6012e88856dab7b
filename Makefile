# The two commands of the README. Both set up the CPU virtual environment first (idempotent:
# a second run only refreshes the editable install).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint

setup:
	bash scripts/setup_cpu.sh

demo: setup
	$(VENV)/bin/verl-oel demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --timeout=1800 tests

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
