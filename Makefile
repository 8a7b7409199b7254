# Set-up and the two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test benchmark clean-demo

# The virtualenv is (re)built when setup.py changes.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Generates the phantom (first time only) and trains GSMorph on it: a few minutes on 2 CPU cores.
demo: $(STAMP)
	$(PY) run_train.py --flagfile=flags/demo.flags

test: $(STAMP)
	$(PY) -m pytest -q tests

benchmark: $(STAMP)
	$(PY) benchmarks/train_step.py

clean-demo:
	rm -rf runs/demo
