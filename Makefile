# saiki — the two commands a newcomer needs are `make demo` and `make test`.
# Each creates .venv and installs the pinned set on first use (about two minutes).

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.DEFAULT_GOAL := help

## help: list the documented targets
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST) | column -t -s ':'

## venv: create .venv with the pinned dependency set (done by every other target)
venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=...)"; exit 1; }
	@command -v java >/dev/null || { echo "need Java 17 on PATH (PyFlink runs on the JVM)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

## demo: run the whole loop end to end on the embedded defaults (starts .saiki/ afresh)
demo: $(STAMP)
	$(BIN)/saiki demo --reset

## test: run the whole test suite (unit, end-to-end and cluster tiers)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## lint: ruff and mypy as configured in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@rm -rf $(VENV)/typecheck && mkdir -p $(VENV)/typecheck/saiki
	@for f in proto/saiki/*; do ln -s $(CURDIR)/$$f $(VENV)/typecheck/saiki/; done
	@for d in core batch speed serving feature_repo ops cli simulator; do \
	  ln -s $(CURDIR)/$$d $(VENV)/typecheck/saiki/$$d; done
	$(BIN)/mypy
	$(BIN)/mypy benchmarks

## proto: regenerate the Python wire types from proto/saiki/v1/*.proto
proto: $(STAMP)
	$(BIN)/python proto/generate.py

## bench: run every benchmark under benchmarks/ (minutes; figures go to stdout)
bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do m=$$(basename $$b .py); echo "== $$m"; $(BIN)/python -m benchmarks.$$m || exit 1; done

## constraints: re-freeze the resolved dependency set after changing pins
constraints: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^saiki' > constraints.txt.new
	@{ sed -n '1,2p' constraints.txt; cat constraints.txt.new; } > constraints.txt && rm constraints.txt.new

## clean: remove the embedded data directory (a clean start)
clean:
	rm -rf .saiki

.PHONY: help venv demo test lint proto bench constraints clean
