# Quick start: `make run` (flagship example end to end) and `make test` (set up and pass the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_CORE := $(VENV)/.core-installed
STAMP_EX := $(VENV)/.examples-installed

.PHONY: run test test-fast test-loaded lint bench bench-api bench-scaleout bench-chaos bench-checkpoint setup setup-examples clean

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

# Headless Chromium for the dashboard's browser test (Debian package, as root; about 35 s on a fresh machine).
STAMP_CHROMIUM := $(VENV)/.chromium-installed
$(STAMP_CHROMIUM): | $(BIN)/python
	command -v chromium || (apt-get update -qq && apt-get install -y -qq chromium)
	touch $@

# Slurm for tests/test_slurm.py: Debian's slurm-wlm and munge (as root; ~10-20 s on a fresh machine). The tests
# start a private single-node cluster of their own (tests/cluster/slurm.sh start DIR) and stop it at the end.
STAMP_SLURM := $(VENV)/.slurm-installed
$(STAMP_SLURM): tests/cluster/slurm.sh | $(BIN)/python
	bash tests/cluster/slurm.sh install
	touch $@

# Ray for the ray engine (tests/test_ray.py starts a private two-node cluster on loopback); ~80 MB download.
STAMP_RAY := $(VENV)/.ray-installed
$(STAMP_RAY): $(STAMP_CORE)
	$(BIN)/pip install -q -e '.[ray]'
	touch $@

test: $(STAMP_EX) $(STAMP_CHROMIUM) $(STAMP_SLURM) $(STAMP_RAY)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/python -m pytest -q -x

# The inner loop (under 2 minutes): lint, then every test but the long kill/chaos runs (marked slow) and the
# examples (marked example). `make test` still runs everything.
test-fast: $(STAMP_CORE)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/python -m pytest -q -x -m "not slow and not example"

# Reliability promise 20: the timing-sensitive tests pass beside BUSY busy-loop processes (default 4).
BUSY ?= 4
LOADED_TESTS := tests/test_kill.py tests/test_chaos.py tests/test_deadline.py tests/test_at_most_once.py \
	tests/test_poison.py tests/test_engines.py tests/test_cli.py tests/test_loop.py
test-loaded: $(STAMP_CORE)
	$(BIN)/python -m pytest -q --busy $(BUSY) $(LOADED_TESTS)

bench: $(STAMP_CORE)
	$(BIN)/python bench/overhead.py

bench-api: $(STAMP_EX)
	$(BIN)/python bench/api.py

bench-scaleout: $(STAMP_RAY)
	$(BIN)/python bench/scaleout.py

bench-chaos: $(STAMP_CORE)
	$(BIN)/python bench/chaos.py

bench-checkpoint: $(STAMP_EX)
	$(BIN)/python bench/checkpoint.py

clean:
	rm -rf $(VENV) runs
