# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
# Each creates or reuses .venv and installs what it needs; nothing has to be installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# torch is pinned to the CPU build that lies on disk; a looser spec downloads a CUDA build.
TORCH_PIN := torch==2.13.0
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' 2>/dev/null)

.PHONY: demo demo-quick test test-slow build clean

$(VENV)/.base: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel pybind11
	$(PIP) install $(TORCH_PIN)
	$(PIP) install --no-build-isolation -e '.[dev]'
	touch $@

$(VENV)/.demo: $(VENV)/.base
	$(PIP) install -e '.[demo,hubert,deepspeed]' --no-build-isolation
	$(PIP) install --no-deps gensim==4.4.0
	touch $@

# Rebuild the C++ extensions in place whenever a csrc/ file changes.
$(VENV)/.ext: $(VENV)/.base $(CSRC)
	$(PY) setup.py -q build_ext --inplace
	touch $@

build: $(VENV)/.ext

test: $(VENV)/.demo $(VENV)/.ext
	$(PY) -m pytest -q -m "not slow and not gpu" tests

test-slow: $(VENV)/.demo $(VENV)/.ext
	$(PY) -m pytest -q -m "slow and not gpu" tests; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

demo: $(VENV)/.demo $(VENV)/.ext
	$(PY) tools/run_demo.py --out demo_out $(DEMO_ARGS)

demo-quick: $(VENV)/.demo $(VENV)/.ext
	$(PY) tools/run_demo.py --out demo_out --quick $(DEMO_ARGS)

clean:
	rm -rf build demo_out megatron_lst/*.so
