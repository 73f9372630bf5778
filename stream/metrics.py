"""Every Prometheus metric of every process, defined once. No account, card or offer-free-text
value is ever a label: labels are small closed sets (event type, outcome, kind, reason, currency)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

EVENTS_CONSUMED = Counter(
    "cashback_events_consumed_total", "Card events consumed by the matcher, by type and outcome.", ["event_type", "outcome"]
)
ACCRUALS = Counter("cashback_accruals_total", "Ledger entries emitted by the matcher.", ["entry_kind", "reward_kind"])
CASHBACK_AMOUNT = Counter(
    "cashback_amount_minor_total",
    "Cashback moved by the matcher's entries, in minor units of the currency.",
    ["entry_kind", "reward_kind", "currency"],
)
DEAD_LETTERS = Counter("cashback_dead_letters_total", "Messages sent to the dead-letter topic.", ["stage", "reason"])
OFFERS_LOADED = Gauge("cashback_offers_loaded", "Offers in this worker's offer book.")
CONSUMER_LAG = Gauge(
    "cashback_consumer_lag_messages", "Messages behind the end of each assigned partition.", ["group", "topic", "partition"]
)
SINK_BATCH_SIZE = Histogram(
    "cashback_sink_batch_size", "Accruals per sink batch.", buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000)
)
SINK_BATCH_SECONDS = Histogram(
    "cashback_sink_batch_seconds",
    "Time to write one sink batch to Postgres (one transaction).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SINK_ENTRIES = Counter("cashback_sink_entries_total", "Ledger entries handled by the sink, by result.", ["result"])
SINK_RETRIES = Counter("cashback_sink_retries_total", "Batch writes retried because Postgres was unreachable.")
API_REQUESTS = Counter("cashback_api_requests_total", "Balance API requests by route and status.", ["route", "status"])


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (127.0.0.1 unless bound elsewhere by the deployment); 0: not served."""
    if port:
        start_http_server(port, addr="0.0.0.0")
        log.info("metrics on :%d/metrics", port)
