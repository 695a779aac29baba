# sdtui — set-up, tests, demo and benchmarks. Every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# torch is pinned and installed by pip on its own, after the lock: pip finds the CPU build
# where one lies on disk, and on a CUDA machine `make setup TORCH_PIN="torch==2.13.0"`
# takes the CUDA build from PyPI with the CUDA libraries that build pins.
TORCH_PIN ?= torch==2.13.0
UV_PIN ?= uv==0.13.8

.PHONY: setup lock test test-fast tidy demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(UV_PIN)"
	$(UV) pip install -q --python $(PY) --compile-bytecode --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(UV) pip install -q --python $(PY) --compile-bytecode --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# Refresh the lock from pyproject.toml (needs only uv; run it after changing a requirement).
lock:
	test -x $(UV) || { test -x $(PY) || $(PYTHON) -m venv $(VENV); $(PY) -m pip install -q "$(UV_PIN)"; }
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) tools/lock.py "$(TORCH_PIN)"

# pytest for make test and test-fast; PYTEST_ARGS adds arguments (a file, -k, -x). Its exit code 5
# (nothing collected) fails with a sentence: a suite that selects no test must not pass as green.
PYTEST_ARGS ?=
PYTEST = $(PY) -m pytest -n 2 --dist loadgroup -q
NO_TESTS = { code=$$?; [ $$code -ne 5 ] || echo "make: pytest collected no tests (exit code 5); check testpaths and markers in pyproject.toml and PYTEST_ARGS" >&2; exit $$code; }

# The whole suite, then the 20 slowest tests.
test: $(STAMP)
	$(PYTEST) --durations=20 $(PYTEST_ARGS) || $(NO_TESTS)

# The unit tests only: everything not marked slow (training, launching processes, tmux, over ~2 s).
test-fast: $(STAMP)
	$(PYTEST) -m "not slow" --durations=10 $(PYTEST_ARGS) || $(NO_TESTS)

# Apply ruff's safe lint fixes and the formatter (what tests/test_code_checks.py checks).
tidy: $(STAMP)
	tools/tidy.sh

demo: $(STAMP)
	$(VENV)/bin/sdtui demo

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache
