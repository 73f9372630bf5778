"""The PromQL vocabulary every dashboard row shares (``stream.ops.dashboard_panels`` and the row modules
beside it): Grafana's rate window and the scrape jobs that tell the processes apart."""

from __future__ import annotations

RATE = "$__rate_interval"
WORKER = 'job="cashback-worker"'
SINKS = 'job=~"cashback-sink|cashback-worker"'  # a worker run --with-sink writes the ledger too
API = 'job="cashback-api"'
PROCESSES = 'job=~"cashback-.*"'
