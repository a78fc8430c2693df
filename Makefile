# Every target sets up .venv on first use: torch 2.13.0 (CPU) first, then the package with all extras.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.neftune-installed

.PHONY: setup demo test test-slow lint support-matrix bench gpu-test gpu-bench device-kit test-oldest test-axolotl test-llamafactory

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

# For the project's own GPU machine, which has no package index and takes 64 MiB a call: wheels, the Dolly file and
# the SmolLM2 GGUF in carry-sized parts, in .device/ (docs/GPU_RESULTS.md: how to carry it and what to run there).
device-kit: $(STAMP)
	$(PY) benchmarks/gpu/kit.py build

# The oldest versions we declare (constraints-oldest.txt: the pyproject floors), in a venv of their own. CI runs it.
OLDEST_VENV ?= .venv-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.neftune-installed
# Core, callback and TRL trainers, PEFT, the transformers patch and the axolotl plugin's logic. Left out: the
# 17-family support matrix, property trees, sweep, distributed and examples (their model classes and sizes
# follow transformers 5; `make test-oldest OLDEST_TESTS=tests` runs everything).
OLDEST_TESTS ?= tests/test_api.py tests/test_formula.py tests/test_lifecycle.py tests/test_hardening_math.py \
	tests/test_hardening_paths.py tests/test_models.py tests/test_transformers_parity.py \
	tests/test_trainer_callback.py tests/test_trainer_sft.py tests/test_transformers_patch.py \
	tests/test_axolotl_plugin.py

$(OLDEST_STAMP): pyproject.toml constraints-oldest.txt
	python3 -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install -q torch==2.13.0
	$(OLDEST_VENV)/bin/python -m pip install -q -c constraints-oldest.txt -e ".[all,dev]"
	touch $(OLDEST_STAMP)

test-oldest: $(OLDEST_STAMP)
	$(OLDEST_VENV)/bin/python -m pip list 2>/dev/null | grep -E "^(torch|transformers|trl|peft|accelerate|datasets) "
	$(OLDEST_VENV)/bin/python -m pytest -q $(OLDEST_TESTS)

# Real framework runs, each in a venv of its own (heavy: ~7 GB each; not part of `make test` or CI). They train a
# tiny Llama on CPU under tests/frameworks/noise_probe.py and fail on any segment whose noise is off its bound.
AXOLOTL_PYTHON ?= $(HOME)/.pyenv/versions/3.12.1/bin/python
AXOLOTL_VENV ?= .venv-axolotl
LLAMAFACTORY_PYTHON ?= python3
LLAMAFACTORY_VENV ?= .venv-llamafactory
FRAMEWORK_PATH := PYTHONPATH=$(CURDIR)/src:$(CURDIR)/tests/frameworks

$(AXOLOTL_VENV)/.neftune-installed:
	test -x $(AXOLOTL_VENV)/bin/python || $(AXOLOTL_PYTHON) -m venv $(AXOLOTL_VENV)
	$(AXOLOTL_VENV)/bin/python -m pip install -q "axolotl==0.21.*"
	$(AXOLOTL_VENV)/bin/python -m pip install -q -e .
	$(AXOLOTL_VENV)/bin/python -m pip check
	touch $@

test-axolotl: $(AXOLOTL_VENV)/.neftune-installed
	$(FRAMEWORK_PATH) $(AXOLOTL_VENV)/bin/python tests/frameworks/run_axolotl.py

$(LLAMAFACTORY_VENV)/.neftune-installed:
	test -x $(LLAMAFACTORY_VENV)/bin/python || $(LLAMAFACTORY_PYTHON) -m venv $(LLAMAFACTORY_VENV)
	$(LLAMAFACTORY_VENV)/bin/python -m pip install -q torch==2.13.0
	$(LLAMAFACTORY_VENV)/bin/python -m pip install -q "llamafactory==0.9.5"
	$(LLAMAFACTORY_VENV)/bin/python -m pip install -q -e .
	$(LLAMAFACTORY_VENV)/bin/python -m pip check
	touch $@

test-llamafactory: $(LLAMAFACTORY_VENV)/.neftune-installed
	$(FRAMEWORK_PATH) $(LLAMAFACTORY_VENV)/bin/python tests/frameworks/run_llamafactory.py
