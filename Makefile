# Two commands do everything on a fresh machine (see README.md):
#   make demo   - create .venv, install dtwz, start a local 3-node cluster and run its demo
#   make test   - create .venv, install dtwz with test tools, lint and run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo store-demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.cluster_demo

store-demo: $(STAMP)
	$(BIN)/python -m examples.demo

lint: $(STAMP)
	$(BIN)/ruff check dtwz tests examples bench
	$(BIN)/ruff format --check dtwz tests examples bench
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.bench_store
	$(BIN)/python -m bench.bench_cluster
	$(BIN)/python -m bench.bench_names
	$(BIN)/python -m bench.bench_graph

clean:
	rm -rf $(VENV) build *.egg-info
