"""Every Prometheus metric of every process, defined once. No account, card or offer-free-text
value is ever a label: labels are small closed sets (event type, outcome, kind, reason, currency)."""

from __future__ import annotations

import logging
from typing import Any

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
# Abuse controls (stream.core.holds), counted by the sink as the ledger takes each entry (a replay counts nothing):
# rule is one of stream.core.abuse.RULE_NAMES (else "other"), decision released or forfeited.
HOLDS = Counter("cashback_holds_total", "Rewards an abuse rule held for review (entries into HELD), by rule.", ["rule"])
HOLD_REVIEWS = Counter(
    "cashback_hold_reviews_total", "Held rewards released or forfeited by operations, by rule and decision.", ["rule", "decision"]
)
MERCHANTS_FLAGGED = Counter(
    "cashback_merchants_flagged_total", "Merchants the sink's scan found concentrating rewards on few accounts (each flag once)."
)


def serve(port: int, host: str = "127.0.0.1") -> Any:
    """Expose /metrics on ``host``:``port`` (METRICS_HOST: loopback unless the deployment opens it
    wider, e.g. 0.0.0.0 for a scraper on another host); port 0: not served. Returns the server (None
    when not served), which serves in a thread until the process ends."""
    if not port:
        return None
    server, _ = start_http_server(port, addr=host)
    log.info("metrics on %s:%d/metrics", host, port)
    return server
