# Set-up and the two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test speed-benchmarks paper-benchmark clean-demo

# The virtualenv is (re)built when setup.py changes.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,baselines,brain]"
	touch $(STAMP)

install: $(STAMP)

# Generates the phantom (first time only) and trains GSMorph on it: a few minutes on 2 CPU cores.
demo: $(STAMP)
	$(PY) run_train.py --flagfile=flags/demo.flags

# Two worker processes (pytest-xdist), each test file on one of them, so module fixtures are built once.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# Speed and memory figures (benchmarks/), printed with the machine they ran on.
speed-benchmarks: $(STAMP)
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/ulae.py

# The GSMorph paper's comparison (Table 1 / Table 2 / Fig. 3) on the phantom (under 45 min on 2 CPU cores).
paper-benchmark: $(STAMP)
	$(PY) run_benchmark.py

clean-demo:
	rm -rf runs/demo
