# Set-up and the two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test browser docs docs-serve speed-benchmarks paper-benchmark clean-demo

# The virtualenv is (re)built when setup.py changes.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,baselines,brain,docs]"
	touch $(STAMP)

install: $(STAMP)

# Generates the phantom (first time only) and trains GSMorph on it: a few minutes on 2 CPU cores.
demo: $(STAMP)
	$(PY) run_train.py --flagfile=flags/demo.flags

# Two worker processes (pytest-xdist), each test file on one of them, so module fixtures are built once.
test: $(STAMP) browser
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests

# The headless browser tests/test_docs_site.py opens: Debian's Chromium and its driver, installed when missing
# (as root with apt-get; otherwise the command to run is printed and the test fails naming it).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium chromium-driver; \
	  else \
	    echo "make browser: /usr/bin/chromium or /usr/bin/chromedriver is missing; as root run:" \
	         "apt-get install -y --no-install-recommends chromium chromium-driver"; \
	  fi; \
	fi

# The documentation site (docs/, mkdocs.yml) built into site/; strict: a broken link, a missing page or a
# docstring the API generator cannot read fails the build. docs-serve serves it live on localhost:8000.
MKDOCS := DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs
docs: $(STAMP)
	$(MKDOCS) build --strict --site-dir site

docs-serve: $(STAMP)
	$(MKDOCS) serve

# Speed and memory figures (benchmarks/), printed with the machine they ran on.
speed-benchmarks: $(STAMP)
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/ulae.py

# The GSMorph paper's comparison (Table 1 / Table 2 / Fig. 3) on the phantom (under 45 min on 2 CPU cores).
paper-benchmark: $(STAMP)
	$(PY) run_benchmark.py

clean-demo:
	rm -rf runs/demo
