# Pip route: `make demo` and `make test` create .venv when missing (with a Python >= 3.12
# found on this machine), install the package with its wheels and dev extras, then run.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# First interpreter >= 3.12 on PATH (pyenv shims included; .python-version asks for 3.12).
PYTHON_CANDIDATES := python3.12 python3.13 python3 python $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3)
FIND_PYTHON = for p in $(PYTHON_CANDIDATES); do \
	  if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	    command -v $$p; exit 0; fi; done; \
	  echo "error: no Python >= 3.12 found (tried: $(PYTHON_CANDIDATES))" >&2; exit 1

.PHONY: all demo test test-all test-mpi lint bench-assembly clean help

help:
	@echo "make demo      create .venv if needed, install, run demos/diffusion.py"
	@echo "make test      create .venv if needed, install, run the fast test suite"
	@echo "make test-all  also run tests marked slow"
	@echo "make lint      ruff check"
	@echo "make clean     remove .venv and caches"

$(PY):
	@base=$$($(FIND_PYTHON)) && echo "creating $(VENV) with $$base ($$($$base --version))" && \
	  $$base -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[wheels,dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) demos/diffusion.py

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check nlss_fenicsx tests demos benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
