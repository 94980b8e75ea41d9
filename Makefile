# engage — developer and CI entry points.
#
#   make venv    .venv with the pinned dependencies (requirements.lock) and the project, editable
#   make stack   Kafka + Redis + Prometheus as local processes (python -m stream devstack up)
#   make tools   programs tests need besides the stack, when missing (chromium, for the report)
#   make kube-tools  the Kubernetes manifest validator (requirements-kube.lock) into .venv
#   make test    ruff, then pytest (unit + integration tests against the stack, the import contract)
#   make demo    the end-to-end demo, ending with an HTML report
#   make bench   the benchmark: throughput, latency, bytes per customer, then bench-startup
#                and bench-scale (BENCH_STARTUP=0 / BENCH_SCALE=0 leave them out)
#   make bench-venv  .venv-bench, the benchmark's own virtualenv with Quix Streams
#                (requirements-bench.lock; made by `make bench`, never needed by the product)
#   make bench-startup  start-up with 1,000,000 customers, memory:// and rocksdb:// (ready, first
#                event, RSS); STARTUP_ARGS="--customers 100000" for a smaller table
#   make bench-handover  two workers, one stopped: time until the other owns everything, with
#                and without standby replicas; HANDOVER_ARGS="--store memory --customers 100000"
#   make bench-backtest  `engage rules diff` over 90 days, 1,000,000 events (goal < 3 min; no
#                broker needed); BACKTEST_ARGS="--events 200000 --compare-jobs" to vary it
#   make bench-scale  1, 2 and 4 workers on 16 partitions (events/s, CPU per event) and the
#                rebalance settle time when a worker joins and leaves under load;
#                SCALE_ARGS="--events 60000 --workers 1,2" for other sizes
#   make chaos   fault injection (crashes, rebalances, broker outage, hostile input);
#                CHAOS_ARGS="--only f --events 3000" to choose experiments and sizes
#   make chaos-cluster  broker failover (g, h, i) on a private 3-broker cluster
#   make status  state of the stack             make down    stop the stack (data kept)
#   make lint    ruff only                      make clean   stop the stack, delete .venv/.devstack
#
# Everything a fresh machine lacks (venv, Kafka jars, redis-server, prometheus) is installed by
# these targets; .ci/run is just `make test`.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test
MAKEFLAGS += --no-builtin-rules

# python3.11 when the machine has it under that name, else python3 (pyproject needs >= 3.11).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.stamp
KUBE_STAMP := $(VENV)/.kube-stamp

BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.stamp

.PHONY: venv bench-venv stack tools kube-tools status test demo bench bench-startup \
	bench-handover bench-backtest bench-scale chaos chaos-cluster down lint clean

venv: $(STAMP)

# Re-runs only when the dependency pins or the project metadata change.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PIP) install -q -r requirements.lock
	$(PIP) install -q --no-deps -e .
	@touch $@

# The Quix Streams row of `make bench` runs in a virtualenv of its own: every Quix Streams
# release caps pydantic below the product's pin (see requirements-bench.lock).
bench-venv: $(BENCH_STAMP)

$(BENCH_STAMP): requirements-bench.lock
	@test -x $(BENCH_VENV)/bin/python || { echo "creating $(BENCH_VENV) with $(PYTHON)"; $(PYTHON) -m venv $(BENCH_VENV); }
	$(BENCH_VENV)/bin/python -m pip --disable-pip-version-check install -q -r requirements-bench.lock
	@touch $@

stack: venv
	$(PY) -m stream devstack up

tools: venv
	$(PY) -m stream devstack tools

# tests/system/test_kubernetes.py validates ops/kubernetes/ against a pinned Kubernetes version's
# schemas with kubernetes-validate: too large for requirements.lock, so installed on its own.
kube-tools: $(KUBE_STAMP)

$(KUBE_STAMP): $(STAMP) requirements-kube.lock
	$(PIP) install -q --no-deps -r requirements-kube.lock
	@touch $@

status: venv
	$(PY) -m stream devstack status

test: venv stack tools kube-tools
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

demo: venv stack
	$(PY) -m stream demo

# Throughput, latency and bytes per customer (a few minutes), then start-up with 1,000,000
# customers (about 10 more; BENCH_STARTUP=0 leaves it out), then the backtest of a rules change
# over 1,000,000 events (about 3 more; BENCH_BACKTEST=0 leaves it out), then the scale-out curve
# and the rebalance settle times (a few minutes; BENCH_SCALE=0 leaves it out).
BENCH_STARTUP ?= 1
BENCH_BACKTEST ?= 1
BENCH_SCALE ?= 1
bench: venv stack bench-venv
	$(PY) bench/throughput.py $(BENCH_ARGS)
	@if [ "$(BENCH_STARTUP)" != 0 ]; then $(PY) bench/startup.py $(STARTUP_ARGS); fi
	@if [ "$(BENCH_BACKTEST)" != 0 ]; then $(PY) bench/backtest.py $(BACKTEST_ARGS); fi
	@if [ "$(BENCH_SCALE)" != 0 ]; then $(PY) bench/scale.py $(SCALE_ARGS); fi

STARTUP_ARGS ?=
bench-startup: venv stack
	$(PY) bench/startup.py $(STARTUP_ARGS)

HANDOVER_ARGS ?=
bench-handover: venv stack
	$(PY) bench/handover.py $(HANDOVER_ARGS)

BACKTEST_ARGS ?=
bench-backtest: venv
	$(PY) bench/backtest.py $(BACKTEST_ARGS)

SCALE_ARGS ?=
bench-scale: venv stack
	$(PY) bench/scale.py $(SCALE_ARGS)

CHAOS_ARGS ?=
chaos: venv stack
	$(PY) bench/chaos.py $(CHAOS_ARGS)

# Broker failover (g, h, i) on a private three-broker cluster (/tmp/chaos-cluster, ports 49092+),
# started and stopped by the run itself; the shared single broker is not used.
chaos-cluster: venv
	$(PY) bench/chaos.py --brokers 3 --only g,h,i $(CHAOS_ARGS)

down: venv
	$(PY) -m stream devstack down

lint: venv
	$(VENV)/bin/ruff check .

clean:
	@if [ -x $(PY) ]; then $(PY) -m stream devstack down || true; fi
	rm -rf $(VENV) $(BENCH_VENV) .devstack .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
