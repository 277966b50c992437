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

# OpenLDAP's slapd and its clients, for tests/system/test_ldap.py (installed when root; else those tests skip)
$(BIN)/.slapd: $(BIN)/.installed
	(command -v slapd || test -x /usr/sbin/slapd) >/dev/null 2>&1 && command -v ldapmodify >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slapd ldap-utils) || \
	  echo "slapd and ldap-utils could not be installed: tests/system/test_ldap.py will skip"
	touch $@

test: $(BIN)/.installed $(BIN)/.slapd
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# ruff (lint and format check) and mypy over the package: zero findings (CI runs it before the tests)
LINTED := permrag tests benchmarks examples
lint: $(BIN)/.installed
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

# no Milvus and no server (tests/unit/conftest.py refuses both)
test-unit: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n 2 tests/unit

# the tests that need no server, no PostgreSQL, no subprocesses and no real model, with a quarter of
# the property tests' examples (about 2 minutes on 2 cores; make test runs them all); tests/system is left out whole
test-fast: $(BIN)/.installed
	PERMRAG_TEST_FAST=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not server and not postgres and not slow"

bench: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

bench-quick: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py --quick

.PHONY: install demo lint test test-unit test-fast bench bench-quick
