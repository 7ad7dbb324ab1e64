# The two commands: `make demo` and `make test`. Both create .venv and install on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# CPU build of torch: on this project's dev machines it lies on disk; elsewhere pip fetches it.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install check test test-slow test-all bench lint demo demo-down clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test]"
	command -v chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	touch $(STAMP)

install: $(STAMP)

# The inner loop (under 3 minutes): lint, the import rule, and every test that starts no service
# or process group.
check: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -x tests/test_layers.py
	$(PY) -m pytest -q -m "not integration and not slow and not gpu and not bench"

# Unit and integration tests (real Ray, MLflow and S3 on loopback), without the multi-minute ones.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu and not bench"

# The multi-minute system tests (a four-node cluster, killed and resumed jobs, the paper layout,
# a fresh virtualenv); CI runs them after `make test` (.ci/run).
test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow and not gpu and not bench"

test-all: $(STAMP)
	$(PY) -m pytest -m "" -q

bench: $(STAMP)
	$(PY) -m pytest -m bench -q -s tests/benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# `make demo DEMO_ARGS="train_steps=2700 scenes=1000 retrain=true"`: the longer schedule that meets every goal (see the README).
demo: $(STAMP)
	$(PY) -m pipelines.quickstart
	$(PY) -m infra.demo dir=.local-stack $(DEMO_ARGS)

demo-down: $(STAMP)
	$(PY) -m infra.local.stack down --dir .local-stack

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
