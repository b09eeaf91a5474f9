# Everything runs from .venv, which `make` creates from pyproject.toml on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv lint typecheck test demo up down bench clean

venv: $(STAMP)

# Runtime dependencies (the Docker image) and everything `make` installs: runtime, [local] and
# [dev]. Both pinned with hashes; the second keeps the first's versions.
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock

# The lock files pin every package, so pip installs them as they are (hash-checked) and then
# the project itself without dependencies. `pip check` fails when pyproject.toml asks for
# something the locks do not hold: then run `make lock`.
$(STAMP): pyproject.toml $(LOCK) $(DEV_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check || { echo "the lock files miss a dependency of pyproject.toml: run make lock" >&2; exit 1; }
	touch $(STAMP)

# Brings both lock files up to date with pyproject.toml: run it after changing dependencies and
# commit the two files. Pins that still fit are kept; delete the files first to take the
# newest versions of everything.
PIP_COMPILE := $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-trusted-host --no-emit-find-links
.PHONY: lock
lock: | $(VENV)/bin/pip-compile
	$(PIP_COMPILE) --output-file $(LOCK) pyproject.toml
	$(PIP_COMPILE) --extra local --extra dev --constraint $(LOCK) --output-file $(DEV_LOCK) pyproject.toml

# pip-compile without the stamp: the locks may be stale when `make lock` runs.
$(VENV)/bin/pip-compile:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(DEV_LOCK)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy .

test: lint typecheck
	$(PY) -m pytest

up: venv
	$(PY) -m local_stack up

down: venv
	$(PY) -m local_stack down

demo: up
	$(PY) starter.py demo

# Payments/s end to end, Temporal against the hand-rolled loop, Stripe limits off and live;
# writes bench/results/<date>.json. `make bench N=500` for a quicker look.
N ?= 2000
bench: venv
	$(PY) -m bench.payments --n $(N)

.PHONY: bench-sandbox
bench-sandbox: venv
	$(PY) -m bench.sandbox_throughput

clean: down
	rm -rf .data

# Chaos soak: N payments (default 500), some refunded or disputed, while the worker is SIGKILLed
# every few seconds, PostgreSQL and the Temporal dev server restart, the webhook receiver is
# killed once and the sandbox injects faults (webhook deliveries too); exits 1 on any double
# charge or refund, lost or stuck payment or refund, orphan, or webhook event not handed on.
# `make chaos N=60` for a short run.
.PHONY: chaos
chaos: venv
	$(PY) -m bench.chaos $(if $(filter command line environment,$(origin N)),--n $(N))

# Launching one period for N customers (default 10,000) through the billing run, payments on an
# unpolled queue and no pacing: launch rate, histories, memory, table sizes;
# writes bench/results/<date>-scale-<N>.json. `make scale N=100000`.
.PHONY: scale
scale: venv
	$(PY) -m bench.scale $(if $(filter command line environment,$(origin N)),--n $(N))
