"""What the dashboards show: every panel's title, unit and PromQL, as plain data. Built into Grafana
JSON by ``stream.ops.dashboards`` and drawn without Grafana by ``stream.ops.render``.

Queries use Grafana's ``$__rate_interval`` for rates; everything else is plain PromQL over the
metrics of ``stream.metrics`` and the recorded series of ``deploy/prometheus/rules.yml``
(``cashback:...``). Processes are told apart by scrape job (``cashback-worker``, ``cashback-sink``,
``cashback-api``): each exports the others' unlabelled metrics at 0. Money is in minor units of
its currency, always split by currency (a yen is not a cent). A new row (the reconciliation
gauges, say) is one more ``Row`` in a dashboard's tuple.
"""

from __future__ import annotations

from stream.ops.dashboard_customers import CUSTOMERS_ROW
from stream.ops.dashboard_payouts import PAYOUTS_ROW
from stream.ops.dashboard_reconciliation import RECONCILIATION_ROW
from stream.ops.panel_model import Dashboard, Panel, Query, Row
from stream.ops.selectors import API, PROCESSES, RATE, SINKS, WORKER

CARD_EVENTS = f'{WORKER}, event_type!="CLOCK_TICK"'
OFFER = "(offer_id, group, currency)"


def quantiles(metric: str, selector: str, legend: str) -> tuple[Query, ...]:
    by_le = f"sum by (le) (rate({metric}_bucket{{{selector}}}[{RATE}]))"
    return tuple(Query(f"histogram_quantile({q}, {by_le})", f"{legend} p{round(q * 100)}") for q in (0.5, 0.99))


PIPELINE = Dashboard(
    name="pipeline",
    uid="cashback-pipeline",
    title="Cashback: pipeline",
    description="Card events in, ledger entries out: throughput, consumer lag, latency, dead letters.",
    rows=(
        Row(
            "Throughput",
            (
                Panel(
                    "Card events decided by type",
                    "Card events the workers decided per second (clock ticks left out).",
                    "ops",
                    (
                        Query(
                            f"sum by (event_type) (rate(cashback_events_consumed_total{{{CARD_EVENTS}}}[{RATE}]))",
                            "{{event_type}}",
                        ),
                    ),
                    stacked=True,
                ),
                Panel(
                    "Ledger entries by result",
                    "Entries the sinks handled per second: written, duplicate (a replay, absorbed), conflict.",
                    "ops",
                    (Query(f"sum by (result) (rate(cashback_sink_entries_total{{{SINKS}}}[{RATE}]))", "{{result}}"),),
                    stacked=True,
                ),
            ),
        ),
        Row(
            "Lag",
            (
                Panel(
                    "Consumer lag by group",
                    "Messages behind the end of the partitions, per consumer group (each partition once).",
                    "short",
                    (Query("cashback:consumer_lag_messages:by_group", "{{group}}"),),
                ),
                Panel(
                    "Consumer lag by partition",
                    "The largest lag reported for each partition.",
                    "short",
                    (
                        Query(
                            "max by (group, topic, partition) (cashback_consumer_lag_messages)",
                            "{{group}} {{topic}}[{{partition}}]",
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Latency",
            (
                Panel(
                    "Ledger latency",
                    "From an accrual message's Kafka timestamp to the commit of the transaction that wrote it.",
                    "s",
                    quantiles("cashback_ledger_latency_seconds", SINKS, "ledger"),
                ),
                Panel(
                    "Latency objective: share slower than 1 s",
                    "The objective allows 1%. Burn-rate alerts compare these windows (deploy/prometheus/rules.yml).",
                    "percentunit",
                    (
                        Query("cashback:ledger_latency_slow:ratio_rate5m", "5 m"),
                        Query("cashback:ledger_latency_slow:ratio_rate1h", "1 h"),
                    ),
                ),
                Panel(
                    "Worker flush and sink batch time",
                    "A worker batch's flush (states to the changelog, entries to the producer); a sink batch's transaction.",
                    "s",
                    quantiles("cashback_worker_flush_seconds", WORKER, "worker flush")
                    + quantiles("cashback_sink_batch_seconds", SINKS, "sink batch"),
                ),
                Panel(
                    "Sink batch size",
                    "Accruals per sink transaction.",
                    "short",
                    quantiles("cashback_sink_batch_size", SINKS, "entries"),
                ),
                Panel(
                    "Garbage collection pauses",
                    "Seconds per second each process spent held by the interpreter's garbage collector, by generation "
                    "(2: a full collection, which holds a worker for hundreds of milliseconds with a full state cache).",
                    "s",
                    (
                        Query(
                            f"sum by (job, generation) (rate(cashback_gc_pause_seconds_sum{{{PROCESSES}}}[{RATE}]))",
                            "{{job}} gen {{generation}}",
                        ),
                    ),
                    stacked=True,
                ),
            ),
        ),
        Row(
            "Dead letters",
            (
                Panel(
                    "Dead letters by stage and reason",
                    "Messages sent to the dead-letter topic per second.",
                    "ops",
                    (Query(f"sum by (stage, reason) (rate(cashback_dead_letters_total[{RATE}]))", "{{stage}} {{reason}}"),),
                    stacked=True,
                ),
                Panel(
                    "Dead letters in 15 minutes",
                    "What the dead-letter alerts count (a reason's first dead letters included).",
                    "short",
                    (Query("cashback:dead_letters:increase15m", "{{stage}} {{reason}}"),),
                ),
            ),
        ),
    ),
)


def amount(entry_kinds: str, by: str) -> str:
    """Minor units per second moved by the matcher's entries of ``entry_kinds`` (a regex), by ``by``."""
    return f'sum by ({by}) (rate(cashback_amount_minor_total{{{WORKER}, entry_kind=~"{entry_kinds}"}}[{RATE}]))'


MONEY = Dashboard(
    name="money",
    uid="cashback-money",
    title="Cashback: money",
    description="Cashback by kind and currency, pending against available, clawbacks, holds, campaign budgets, offer results.",
    rows=(
        Row(
            "Cashback",
            (
                Panel(
                    "Cashback confirmed by reward kind and currency",
                    "Minor units per second of the currency (points: PTS) confirmed by clearings.",
                    "short",
                    (Query(amount("CONFIRMED", "reward_kind, currency"), "{{reward_kind}} {{currency}}"),),
                    stacked=True,
                ),
                Panel(
                    "Pending against available",
                    "Minor units per second into pending (authorisations), confirmed, made available.",
                    "short",
                    (
                        Query(
                            amount("PENDING_CREATED|CONFIRMED|MADE_AVAILABLE", "entry_kind, currency"),
                            "{{entry_kind}} {{currency}}",
                        ),
                    ),
                ),
                Panel(
                    "Ledger entries by kind",
                    "Entries the matcher emitted per second, by kind (purchases that earned nothing left out).",
                    "ops",
                    (
                        Query(
                            f'sum by (entry_kind) (rate(cashback_accruals_total{{{WORKER}, entry_kind!="NOT_EARNED"}}[{RATE}]))',
                            "{{entry_kind}}",
                        ),
                    ),
                    stacked=True,
                ),
                Panel(
                    "Pending released or expired",
                    "Minor units per second taken out of pending: authorisations reversed or expired.",
                    "short",
                    (Query(amount("PENDING_RELEASED|EXPIRED", "entry_kind, currency"), "{{entry_kind}} {{currency}}"),),
                ),
            ),
        ),
        Row(
            "Clawbacks and holds",
            (
                Panel(
                    "Clawbacks and recredits",
                    "Minor units per second clawed back (refunds, chargebacks) and recredited (chargebacks reversed).",
                    "short",
                    (
                        Query(
                            amount("CLAWED_BACK|RECREDITED|HOLD_FORFEITED", "entry_kind, currency"), "{{entry_kind}} {{currency}}"
                        ),
                    ),
                ),
                Panel(
                    "Rewards held by abuse rule",
                    "Rewards an abuse rule held for review per second, and held rewards released or forfeited.",
                    "ops",
                    (
                        Query(f"sum by (rule) (rate(cashback_holds_total{{{SINKS}}}[{RATE}]))", "held: {{rule}}"),
                        Query(
                            f"sum by (decision) (rate(cashback_hold_reviews_total{{{SINKS}}}[{RATE}]))",
                            "reviewed: {{decision}}",
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Campaign budgets",
            (
                Panel(
                    "Campaign budget left",
                    "Share of each campaign budget left, as the workers last read it.",
                    "percentunit",
                    (Query("cashback:campaign_budget:remaining_ratio", "{{budget}} ({{unit}})"),),
                ),
                Panel(
                    "Campaign budget left, in minor units",
                    "What is left of each budget in minor units of its currency (or points).",
                    "short",
                    (
                        Query(
                            f"min by (budget, unit) (cashback_campaign_budget_remaining_minor{{{WORKER}}})",
                            "{{budget}} ({{unit}})",
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Offer results",
            (
                Panel(
                    "Offer average basket: treated against holdout",
                    "Spend over purchases per offer, group and currency (minor units), whole life, as the API reads the ledger.",
                    "short",
                    (
                        Query(
                            f"max by {OFFER} (cashback_offer_spend_minor{{{API}}}) / max by {OFFER} (cashback_offer_purchases{{{API}}} > 0)",
                            "{{offer_id}} {{group}} {{currency}}",
                        ),
                    ),
                ),
                Panel(
                    "Offer accounts by group",
                    "Accounts with a purchase each live offer paid (treated) or would have (holdout).",
                    "short",
                    (Query(f"max by (offer_id, group) (cashback_offer_accounts{{{API}}})", "{{offer_id}} {{group}}"),),
                ),
                Panel(
                    "Offer cost",
                    "Cashback each live offer booked net of releases, expiries and clawbacks, in minor units of its unit.",
                    "short",
                    (Query(f"max by (offer_id, unit) (cashback_offer_cost_minor{{{API}}})", "{{offer_id}} {{unit}}"),),
                ),
            ),
        ),
        PAYOUTS_ROW,
        CUSTOMERS_ROW,
    ),
)


RELIABILITY = Dashboard(
    name="reliability",
    uid="cashback-reliability",
    title="Cashback: reliability",
    description="Processes up and restarting, Postgres retries, ledger conflicts, offers, the API.",
    rows=(
        Row(
            "Processes",
            (
                Panel(
                    "Targets up",
                    "1: Prometheus scraped the process.",
                    "short",
                    (Query(f"up{{{PROCESSES}}}", "{{job}} {{instance}}"),),
                ),
                Panel(
                    "Restarts in 30 minutes",
                    "Times the process's start time changed (two or more alert).",
                    "short",
                    (Query(f"changes(process_start_time_seconds{{{PROCESSES}}}[30m])", "{{job}} {{instance}}"),),
                ),
                Panel(
                    "Resident memory",
                    "Each process's resident set.",
                    "bytes",
                    (Query(f"process_resident_memory_bytes{{{PROCESSES}}}", "{{job}} {{instance}}"),),
                ),
                Panel(
                    "Worker state cache",
                    "The memory the account states each worker keeps whole take, as estimated from what they hold "
                    "(at most WORKER_STATE_CACHE_MB), and their accounts. Full, the least recently used states are "
                    "read back from the local store.",
                    "short",
                    (
                        Query(f"cashback_worker_state_cache_bytes{{{WORKER}}} / 1048576", "MiB {{instance}}"),
                        Query(f"cashback_worker_state_cache_accounts{{{WORKER}}}", "accounts {{instance}}"),
                    ),
                ),
                Panel(
                    "Worker local stores",
                    "Each worker's RocksDB block cache in use, its memtables charged to it (a budget of 64 MiB, not a strict limit).",
                    "bytes",
                    (Query(f"cashback_worker_store_memory_bytes{{{WORKER}}}", "{{instance}}"),),
                ),
                Panel(
                    "CPU",
                    "CPU seconds per second (1 = one core).",
                    "short",
                    (Query(f"rate(process_cpu_seconds_total{{{PROCESSES}}}[{RATE}])", "{{job}} {{instance}}"),),
                ),
            ),
        ),
        Row(
            "Postgres and the ledger",
            (
                Panel(
                    "Sink retries and batches in 5 minutes",
                    "Batch writes retried because Postgres was unreachable, and batches written.",
                    "short",
                    (
                        Query("cashback:sink_retries:increase5m", "retries {{instance}}"),
                        Query("cashback:sink_batches:increase5m", "batches {{instance}}"),
                    ),
                ),
                Panel(
                    "Ledger conflicts in the last hour",
                    "Entries refused because their id is in the ledger with other content (alerts above 0).",
                    "short",
                    (Query("cashback:ledger_conflicts:increase1h", "conflicts"),),
                ),
            ),
        ),
        Row(
            "Offers and the API",
            (
                Panel(
                    "Offers loaded per worker",
                    "Each worker's offer book: all workers hold the same.",
                    "short",
                    (Query(f"cashback_offers_loaded{{{WORKER}}}", "{{instance}}"),),
                ),
                Panel(
                    "API requests by status",
                    "Balance API requests per second.",
                    "reqps",
                    (Query(f'sum by (status) (rate(cashback_api_requests_total{{job="cashback-api"}}[{RATE}]))', "{{status}}"),),
                    stacked=True,
                ),
            ),
        ),
        RECONCILIATION_ROW,
    ),
)

DASHBOARDS = (PIPELINE, MONEY, RELIABILITY)
