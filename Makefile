# Two commands do all the set-up on a fresh machine:
#   make demo   — install into .venv and run `permrag demo` on the embedded default
#   make test   — install into .venv and run the test suite (python -m pytest)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the local CPU build first, or sentence-transformers pulls CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/permrag demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

bench-quick: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py --quick

.PHONY: install demo test bench bench-quick
