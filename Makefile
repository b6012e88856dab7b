# The two commands of the README. Both set up the CPU virtual environment first (idempotent:
# a second run only refreshes the editable install).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

.PHONY: setup demo test test-fast lint

setup:
	bash scripts/setup_cpu.sh

demo: setup
	$(VENV)/bin/verl-oel demo

# The whole suite (what CI runs), with the slowest tests listed at the end.
test: setup
	$(PYTEST) --timeout=1800 --durations=25 tests

# Everything that needs neither verl's real stack (marker `verl`) nor the warmed model (marker
# `warm_model`: a ~10 minute build the first time on a machine): minutes, for the edit-test loop.
test-fast: setup
	$(PYTEST) --timeout=600 --durations=10 -m "not verl and not warm_model" tests

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
