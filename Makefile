# The two commands of the README. Only Python 3.11+ and make are needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-python lint install install-test clean

# `make test` runs the whole suite on both datapaths: the native one (where it was
# built) and the pure-Python reference (INTENTRA_NATIVE=0). Most tests mostly wait
# (sockets, subprocesses, timers), so pytest-xdist runs them 3 at a time (worksteal:
# a worker that finishes early takes tests queued for another); the tests
# marked "serial" assert latency or rate bounds on real sockets and run alone after.
# See README "Tests on both paths".
PYTEST := $(BIN)/pytest -q -p no:cacheprovider
PARALLEL := -n 3 --dist worksteal -m "not serial and not soak and not fuzz"
SERIAL := -m "serial and not soak and not fuzz"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[ui,fast]'

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

demo: install
	$(BIN)/intentra demo

test: install-test
	$(BIN)/ruff check src tests tools fuzz
	$(BIN)/mypy
	$(PYTEST) $(PARALLEL)
	INTENTRA_NATIVE=0 $(PYTEST) $(PARALLEL)
	$(PYTEST) $(SERIAL)
	INTENTRA_NATIVE=0 $(PYTEST) $(SERIAL)

# The whole suite on the pure-Python datapath only (what a machine without a compiler runs).
test-python: install-test
	INTENTRA_NATIVE=0 $(PYTEST) $(PARALLEL)
	INTENTRA_NATIVE=0 $(PYTEST) $(SERIAL)

lint: install-test
	$(BIN)/ruff check src tests tools fuzz
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	rm -f src/intentra/_native*.so
