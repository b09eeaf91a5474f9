# Everything runs from .venv, which `make` creates from pyproject.toml on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv lint typecheck test demo up down bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

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

# Chaos soak: N payments (default 500) while the worker is SIGKILLed every few seconds,
# PostgreSQL and the Temporal dev server restart and the sandbox injects faults; exits 1 on any
# double charge, lost or stuck payment or orphan. `make chaos N=60` for a short run.
.PHONY: chaos
chaos: venv
	$(PY) -m bench.chaos $(if $(filter command line environment,$(origin N)),--n $(N))

# Launching one period for N customers (default 10,000) through the billing run, payments on an
# unpolled queue and no pacing: launch rate, histories, memory, table sizes;
# writes bench/results/<date>-scale-<N>.json. `make scale N=100000`.
.PHONY: scale
scale: venv
	$(PY) -m bench.scale $(if $(filter command line environment,$(origin N)),--n $(N))
