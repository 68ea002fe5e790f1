# Quick start: `make run` (flagship example end to end) and `make test` (set up and pass the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_CORE := $(VENV)/.core-installed
STAMP_EX := $(VENV)/.examples-installed

.PHONY: run test lint bench bench-api bench-chaos bench-checkpoint setup setup-examples clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP_CORE): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# torch first and pinned: pip takes the CPU wheel of that version; an unpinned torch pulls a CUDA build.
$(STAMP_EX): $(STAMP_CORE)
	$(BIN)/pip install -q 'torch==2.13.0'
	$(BIN)/pip install -q -e '.[examples]'
	touch $@

setup: $(STAMP_CORE)

setup-examples: $(STAMP_EX)

run: $(STAMP_EX)
	$(BIN)/python -m examples.embed_docstrings $(ARGS)

test: $(STAMP_EX)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/python -m pytest -q -x

bench: $(STAMP_CORE)
	$(BIN)/python bench/overhead.py

bench-api: $(STAMP_EX)
	$(BIN)/python bench/api.py

bench-chaos: $(STAMP_CORE)
	$(BIN)/python bench/chaos.py

bench-checkpoint: $(STAMP_EX)
	$(BIN)/python bench/checkpoint.py

clean:
	rm -rf $(VENV) runs
