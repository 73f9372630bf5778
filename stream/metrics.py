"""Every Prometheus metric of every process, defined once. No account, card or offer-free-text
value is ever a label: labels are small closed sets (event type, outcome, kind, reason, currency)."""

from __future__ import annotations

import bisect
import gc
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from stream.core.abuse import RULE_NAMES
from stream.core.entries import ITEM_KINDS
from stream.core.outcomes import Outcome

# No ``*_created`` series (a creation timestamp beside every counter and histogram): they double what
# each scrape reads and no rule or dashboard uses them (Prometheus computes rates from the counters).
disable_created_metrics()

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
NOTIFICATIONS = Counter(
    "cashback_notifications_total", "Customer notifications sent by the matcher (stream.core.notices).", ["kind", "language"]
)
PAYOUTS = Counter(
    "cashback_payouts_total",
    "Cash payouts (stream.core.payouts): requested of the bank's core banking system (sent by the matcher), "
    "then confirmed or rejected by it (decided by the matcher), per currency.",
    ["event", "currency"],
)
PAYOUT_SKIPS = Counter(
    "cashback_payout_skips_total",
    "Accounts a payout run paid nothing: nothing_to_pay (no currency at or above its minimum) or "
    "wallet_unknown (a state stored before wallets were kept: opened by an operator's OPEN_WALLET).",
    ["reason"],
)
DEAD_LETTERS = Counter("cashback_dead_letters_total", "Messages sent to the dead-letter topic.", ["stage", "reason"])
MISROUTED = Counter(
    "cashback_misrouted_forwarded_total",
    "Input messages read on a partition other than their account's (a producer not partitioning by murmur2), "
    "forwarded to the account's partition.",
    ["topic"],
)
OFFERS_LOADED = Gauge("cashback_offers_loaded", "Offers in this worker's offer book.")
CONSUMER_LAG = Gauge(
    "cashback_consumer_lag_messages", "Messages behind the end of each assigned partition.", ["group", "topic", "partition"]
)
# The lag above covers only the partitions a worker owns: a worker out of its group owns none and
# shows no lag at all (stream.group_membership).
WORKER_IN_GROUP = Gauge(
    "cashback_worker_in_group", "1 while this worker's consumer is a member of its consumer group, 0 while it is out of it."
)
# Where a worker's memory goes, beside process_resident_memory_bytes: the account states it keeps whole
# in memory (bounded by the setting WORKER_STATE_CACHE_MB, as stream.core.state_memory.memory_of estimates
# them) and its local stores' shared block cache, their memtables charged to it (STORE_MEMORY_BYTES: a
# budget, not a strict limit).
STATE_CACHE_BYTES = Gauge(
    "cashback_worker_state_cache_bytes",
    "The memory the account states kept whole take, as estimated part by part (at most WORKER_STATE_CACHE_MB).",
)
STATE_CACHE_ACCOUNTS = Gauge("cashback_worker_state_cache_accounts", "Accounts whose state this worker keeps whole in memory.")
STORE_MEMORY_USED = Gauge(
    "cashback_worker_store_memory_bytes",
    "The worker's local stores' shared RocksDB block cache in use, their memtables charged to it (a budget of 64 MiB, not a strict limit).",
)
WORKER_REJOINS = Counter(
    "cashback_worker_rejoins_total", "Times this worker found its consumer out of its group too long and made it rejoin."
)
WORKER_ORDER_TIMEOUTS = Counter(
    "cashback_worker_order_timeouts_total",
    "Times a partition's kept input messages were handed on without waiting longer for another of its topics to be read to its end.",
)
SINK_BATCH_SIZE = Histogram(
    "cashback_sink_batch_size", "Accruals per sink batch.", buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000)
)
SINK_BATCH_SECONDS = Histogram(
    "cashback_sink_batch_seconds",
    "Time to write one sink batch to Postgres (one transaction).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WORKER_BATCH_SIZE = Histogram(
    "cashback_worker_batch_size",
    "Input messages per worker batch (one changelog wait for all their states, then their entries).",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000),
)
WORKER_FLUSH_SECONDS = Histogram(
    "cashback_worker_flush_seconds",
    "Time to flush one worker batch: its states to the changelog, acknowledged, then its entries handed to the producer.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
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


# --- for the alert rules and dashboards (deploy/prometheus/rules.yml, stream/ops/dashboard_panels.py) ------------
# Pre-bound so that the series exist at 0 from the start: rate() and increase() cannot see the first
# increment of a series that appears with it (the first ledger conflict would never alert).
for _result in ("written", "duplicate", "conflict"):
    SINK_ENTRIES.labels(_result)
for _rule in (*RULE_NAMES, "other"):  # the sink's labels of the abuse controls (stream.sink.count_holds)
    HOLDS.labels(_rule)
    for _decision in ("released", "forfeited"):
        HOLD_REVIEWS.labels(_rule, _decision)


class BatchHistogram(Collector):
    """A histogram without labels that takes a batch of values in one call, for the hot paths that observe one per
    row: prometheus_client's ``Histogram.observe`` takes one value under its locks (the sink observed one per
    ledger entry: about a twentieth of its CPU in a profile). The same exposition as a ``Histogram`` of these
    buckets (its ``le`` labels included: ``tests/unit/test_batch_histogram.py`` holds them equal)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry = REGISTRY) -> None:
        self.name, self.documentation, self.bounds = name, documentation, tuple(float(b) for b in buckets)
        self._labels = (*map(floatToGoString, self.bounds), "+Inf")
        self._counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; the last: +Inf
        self._sum = 0.0
        self._lock = threading.Lock()  # scrapes read from the HTTP server's thread
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        # Sorted once (in C), a bucket's count lies between two bisections (its values up to and including its bound:
        # ``le``): 1 ms for 10,000 values, 4 one at a time, in the sink's event loop between two transactions.
        ordered = sorted(values)
        ends = [*(bisect.bisect_right(ordered, bound) for bound in self.bounds), len(ordered)]
        counts, total = [end - start for start, end in zip([0, *ends], ends, strict=False)], sum(ordered)
        with self._lock:
            self._counts = [held + new for held, new in zip(self._counts, counts, strict=True)]
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = self._counts, self._sum
        yield HistogramMetricFamily(self.name, self.documentation, _cumulative(self._labels, counts), total)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)


def _cumulative(labels: Iterable[str], counts: Iterable[int]) -> list[tuple[str, float]]:
    """A histogram's buckets as Prometheus exposes them: each ``le`` bound with the count at or below it."""
    cumulative: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(labels, counts, strict=True):
        running += count
        cumulative.append((bound, running))
    return cumulative


LEDGER_LATENCY_SECONDS = BatchHistogram(
    "cashback_ledger_latency_seconds",
    "Seconds from the broker timestamp of the card event (or clock tick) behind a ledger entry to the commit of "
    "the sink transaction that wrote it: event to balance (the entries the transaction added; a replay's entries "
    "were readable before).",
    # 1 s is the latency objective's threshold (deploy/prometheus/rules.yml): keep it a bucket boundary.
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
# budget: a campaign budget's key (an offer id, or <offer id>@<currency>): the offers' own closed set, never
# an account; unit: the budget's currency or points. Set by each worker whenever it reads what is left.
CAMPAIGN_BUDGET = Gauge("cashback_campaign_budget_minor", "A campaign budget, in minor units of its unit.", ["budget", "unit"])
BUDGET_BATCHES_REFUSED = Counter(
    "cashback_budget_batches_refused_total",
    "Worker batches whose campaign-budget grants were refused (another worker took the budget since it was read): "
    "the batch is dropped and its messages read again.",
)
CAMPAIGN_BUDGET_REMAINING = Gauge(
    "cashback_campaign_budget_remaining_minor",
    "What is left of a campaign budget, as this worker last read it (minor units of its unit).",
    ["budget", "unit"],
)

# Reconciliation (stream.reconciliation): kind is one of stream.core.entries.ITEM_KINDS, age one of
# stream.reconciliation.AGE_BUCKETS. The items counter is the sink's (new rows only: a replay counts nothing); the
# gauges are set by each API process from the ledger every RECONCILE_INTERVAL_S (replicas report the same values).
RECONCILIATION_ITEMS = Counter(
    "cashback_reconciliation_items_total",
    "Reconciliation items the ledger took (refunds and chargebacks of purchases never seen cleared, force posts), by kind.",
    ["kind"],
)
RECONCILIATION_ITEMS_LAST_DAY = Gauge(
    "cashback_reconciliation_items_last_day", "Reconciliation items recorded in the last 24 hours, by kind.", ["kind"]
)
RECONCILIATION_UNCLEARED = Gauge(
    "cashback_reconciliation_uncleared_authorisations",
    "Authorised purchases whose pending cashback the ledger still holds (not cleared, not expired), by age of the pending.",
    ["age"],
)
RECONCILIATION_PAST_WINDOW = Gauge(
    "cashback_reconciliation_pending_past_window",
    "Purchases still pending more than an hour after their offers' auth_expiry_days: the worker's clock is not releasing them.",
)
RECONCILIATION_OLDEST_PENDING = Gauge(
    "cashback_reconciliation_oldest_pending_seconds", "Age of the oldest pending cashback the ledger holds (0: none)."
)
RECONCILIATION_LAST_RUN = Gauge(
    "cashback_reconciliation_last_run_timestamp_seconds", "When this process last computed the reconciliation gauges."
)
for _kind in ITEM_KINDS:
    RECONCILIATION_ITEMS.labels(_kind)

# Offer results (stream.offer_results): per live offer (the book bounds offer_id), group treated|holdout, currency the
# purchases' ISO 4217 billing currency, unit the cost's (ISO 4217 or PTS). Set by each API process every
# RECONCILE_INTERVAL_S over the offer's whole life (replicas report the same values: rules and panels take max).
OFFER_ACCOUNTS = Gauge(
    "cashback_offer_accounts", "Accounts with a purchase of the offer's group, every currency.", ["offer_id", "group"]
)
OFFER_ELIGIBLE_ACCOUNTS = Gauge(
    "cashback_offer_eligible_accounts", "Accounts with a purchase the offer applied to, treated or held out.", ["offer_id"]
)
OFFER_PURCHASES = Gauge(
    "cashback_offer_purchases", "Purchases the offer paid (treated) or would have (holdout).", ["offer_id", "group", "currency"]
)
OFFER_SPEND = Gauge(
    "cashback_offer_spend_minor",
    "Spend of those purchases (their amount as judged), in minor units of the currency.",
    ["offer_id", "group", "currency"],
)
OFFER_COST = Gauge(
    "cashback_offer_cost_minor",
    "Cashback the offer booked net of releases, expiries and clawbacks, in minor units.",
    ["offer_id", "unit"],
)
OFFER_ACTIVATIONS = Gauge(
    "cashback_offer_activations",
    "Accounts holding the offer activated, by group, as the API last read them.",
    ["offer_id", "group"],
)
OFFER_RESULTS_LAST_RUN = Gauge(
    "cashback_offer_results_last_run_timestamp_seconds", "When this process last computed the offer results gauges."
)
# Payouts (customers' and charities': the payouts table, migration 0019). The gauges are computed from the table
# by the API every PAYOUT_GAUGES_INTERVAL_S (stream.payout_gauges); each beneficiary kind is always present (0 when
# nothing is unanswered).
PAYOUT_BENEFICIARIES = ("CUSTOMER", "CHARITY")
PAYOUTS_UNANSWERED = Gauge(
    "cashback_payouts_unanswered", "Payouts asked of the bank's core banking system and not answered yet.", ["beneficiary"]
)
PAYOUT_OLDEST_UNANSWERED = Gauge(
    "cashback_payout_oldest_unanswered_seconds",
    "Age of the oldest payout not answered yet, from its request (0: none unanswered).",
    ["beneficiary"],
)
PAYOUT_GAUGES_LAST_RUN = Gauge(
    "cashback_payout_gauges_last_run_timestamp_seconds", "When this process last computed the payout gauges."
)
PAYOUT_ANSWERS = Counter(
    "cashback_payout_answers_total",
    "Answers of the core banking system read into the payouts table by the sink (a redelivery counts again).",
    ["beneficiary", "status"],
)
DONATION_REMITTANCES = Counter(
    "cashback_donation_remittances_total",
    "Remittances of donations to charities recorded by DONATION_SCHEDULE's runs in this process (a command's are not scraped).",
)
for _beneficiary in PAYOUT_BENEFICIARIES:
    PAYOUTS_UNANSWERED.labels(_beneficiary)
    PAYOUT_OLDEST_UNANSWERED.labels(_beneficiary)
    for _status in ("CONFIRMED", "REJECTED"):
        PAYOUT_ANSWERS.labels(_beneficiary, _status)


_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, kept: the hot path counts several times for every event, and
    prometheus_client looks the child up under a lock each time (about 2 microseconds). Only for
    children never removed (``forget_lag``'s gauge is not one)."""
    key = (metric, values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def observe_ledger_latency(timestamps_ms: Iterable[int], written: int, now_s: float | None = None) -> None:
    """``LEDGER_LATENCY_SECONDS`` for one committed sink batch: ``timestamps_ms`` its messages' Kafka
    timestamps, ``written`` how many entries the transaction added. The ``written`` newest count: the
    others are duplicates, mostly a replay's redelivered messages, the oldest of the batch."""
    if written <= 0:
        return
    now_ms = (time.time() if now_s is None else now_s) * 1000.0
    LEDGER_LATENCY_SECONDS.observe_many([max(0.0, now_ms - t) / 1000.0 for t in sorted(timestamps_ms)[-written:]])


_PAYOUT_ANSWERED = {Outcome.PAYOUT_CONFIRMED: "confirmed", Outcome.PAYOUT_REJECTED: "rejected"}


def count_payout_decision(outcome: Outcome, currency: str) -> None:
    """A payout's answer decided (in the payout id's currency), or an account a run paid nothing, and why (requests: outbox)."""
    if outcome in _PAYOUT_ANSWERED:
        PAYOUTS.labels(_PAYOUT_ANSWERED[outcome], currency).inc()
    elif outcome in (Outcome.NOTHING_TO_PAY, Outcome.WALLET_UNKNOWN):
        PAYOUT_SKIPS.labels(outcome.value).inc()


def observe_budgets(budgets: Mapping[str, tuple[int, str]], remaining: Mapping[str, int]) -> None:
    """The budget gauges from one read of what is left (``budgets``: key -> (amount, unit))."""
    for key, left in remaining.items():
        if key in budgets:
            amount, unit = budgets[key]
            CAMPAIGN_BUDGET.labels(key, unit).set(amount)
            CAMPAIGN_BUDGET_REMAINING.labels(key, unit).set(left)


def forget_lag(group: str, topic: str, partition: int) -> None:
    """Stop reporting the lag of a partition this process no longer owns."""
    try:
        CONSUMER_LAG.remove(group, topic, str(partition))
    except KeyError:  # never reported
        pass


GC_PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GcPauses(Collector):
    """``cashback_gc_pause_seconds{generation}``: how long each of the interpreter's garbage
    collections held the process (its event loop, its consumer thread: everything waits). A
    worker keeping hundreds of thousands of objects alive has full collections of a few hundred
    milliseconds, which an event arriving meanwhile waits out.

    Counted in the collector's own callback into plain lists, and turned into a histogram only when
    scraped: a callback that took a metric's lock could deadlock a thread that holds it (a
    collection starts at any allocation; prometheus/client_python issues 363 and 371)."""

    def __init__(self) -> None:
        self.buckets = [[0] * (len(GC_PAUSE_BUCKETS) + 1) for _ in range(3)]  # per generation; the last: +Inf
        self.sums = [0.0, 0.0, 0.0]
        self._started = 0.0

    def on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        pause = time.perf_counter() - self._started
        self.buckets[generation][bisect.bisect_left(GC_PAUSE_BUCKETS, pause)] += 1
        self.sums[generation] += pause

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "cashback_gc_pause_seconds",
            "Time each garbage collection of the interpreter held this process, by generation (2: a full collection).",
            labels=["generation"],
        )
        for generation, counts in enumerate(self.buckets):
            family.add_metric(
                [str(generation)], _cumulative((*map(str, GC_PAUSE_BUCKETS), "+Inf"), counts), self.sums[generation]
            )
        yield family


GC_PAUSES = GcPauses()


def observe_gc_pauses() -> None:
    """Count this process's garbage collections in ``cashback_gc_pause_seconds`` (once per process)."""
    if GC_PAUSES.on_collection not in gc.callbacks:
        gc.callbacks.append(GC_PAUSES.on_collection)
        REGISTRY.register(GC_PAUSES)


def serve(port: int, host: str = "127.0.0.1") -> Any:
    """Expose /metrics on ``host``:``port`` (METRICS_HOST: loopback unless the deployment opens it
    wider, e.g. 0.0.0.0 for a scraper on another host), with the garbage collector's pauses
    (``GcPauses``); port 0: not served. Returns the server (None when not served), which serves in
    a thread until the process ends."""
    if not port:
        return None
    observe_gc_pauses()
    server, _ = start_http_server(port, addr=host)
    log.info("metrics on %s:%d/metrics", host, port)
    return server
