# `make demo` and `make test` do all set-up on a fresh machine.
# Torch is pinned to a CPU wheel by default; CUDA users: make TORCH="torch==2.13.0 --index-url ..." demo
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test docs bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test,browser,ray,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m circuitfind.demo

test: $(STAMP)
	$(PY) -m pytest -q

docs: $(STAMP)  # the site, warnings as errors (tests/test_docs.py builds it too): build/docs/index.html
	$(PY) -m mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/canonical.py
	$(PY) benchmarks/engine.py
	$(PY) benchmarks/methods.py
	$(PY) benchmarks/acdc_layers.py
	$(PY) benchmarks/batching.py
	$(PY) benchmarks/shared_prefix.py
	$(PY) benchmarks/correlation.py
	$(PY) benchmarks/edge_pruning.py
	$(PY) benchmarks/node_ig.py
	$(PY) benchmarks/experts.py

clean:
	rm -rf $(VENV) build *.egg-info
