# Every target sets up .venv on first use: torch 2.13.0 (CPU) first, then the package with all extras.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.neftune-installed

.PHONY: setup demo test test-slow lint support-matrix bench gpu-test gpu-bench

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m neftune demo

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples scripts benchmarks
	$(VENV)/bin/ruff format --check src tests examples scripts benchmarks
	$(VENV)/bin/mypy --strict src

support-matrix: $(STAMP)
	$(PY) scripts/support_matrix.py

bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[all,dev,bench]"
	$(PY) benchmarks/overhead.py

# On a CUDA machine (PyPI's torch 2.13.0 wheel for Linux is the CUDA build; triton comes with it and with [dev]).
gpu-test: $(STAMP)
	$(PY) -m pytest -m gpu -v -rs

gpu-bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[all,dev,bench]"
	$(PY) benchmarks/overhead.py --device cuda
