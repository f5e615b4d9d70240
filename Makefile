# The two commands of the README. Only Python 3.11+ and make are needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-python lint install install-test clean

# The sans-I/O core's receive-path suites (about 40 s), rerun on the pure-Python
# reference by `make test`: the whole suite runs on the default path (native where
# it was built) and the differential tests compare both paths on every input; see
# README "Tests on both paths". `make test-python` runs everything on Python.
ADV := tests/adversarial
PYTHON_PATH_TESTS := $(ADV)/test_cookies_and_limits.py $(ADV)/test_credit_and_acks.py \
	$(ADV)/test_defence_gaps.py $(ADV)/test_handshake_blocking.py $(ADV)/test_hostile_peer.py \
	$(ADV)/test_malformed.py $(ADV)/test_nonces_and_keys.py $(ADV)/test_path_validation.py \
	$(ADV)/test_properties.py $(ADV)/test_replay_and_spoofing.py tests/test_session.py \
	tests/test_handshake.py tests/test_key_catch_up.py tests/test_datapath.py

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
	$(BIN)/pytest -q
	INTENTRA_NATIVE=0 $(BIN)/pytest -q $(PYTHON_PATH_TESTS)

# The whole suite on the pure-Python datapath (what runs where the extension is not built).
test-python: install-test
	INTENTRA_NATIVE=0 $(BIN)/pytest -q

lint: install-test
	$(BIN)/ruff check src tests tools fuzz
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	rm -f src/intentra/_native*.so
