# sdtui — set-up, tests, demo and benchmarks. Every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Pin torch first so that a machine without an NVIDIA driver gets the CPU build
# instead of pulling gigabytes of CUDA wheels through an open requirement.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -q

demo: $(STAMP)
	$(VENV)/bin/sdtui demo

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache
