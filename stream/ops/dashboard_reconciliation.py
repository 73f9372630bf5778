"""The reliability dashboard's reconciliation row (``stream.ops.dashboard_panels``): what operations have to
reconcile (``stream/reconciliation.py``; the items behind each count: GET /v1/operations/reconciliation/{kind}),
what is left of the campaign budgets, and how far the ledger is behind the accruals topic."""

from __future__ import annotations

from stream.ops.panel_model import Panel, Query, Row
from stream.ops.selectors import API

_ACCRUALS_LAG = 'cashback_consumer_lag_messages{topic=~".*accruals"}'  # only the sinks read the accruals topic

RECONCILIATION_ROW = Row(
    "Reconciliation",
    (
        Panel(
            "Reconciliation items in the last hour",
            "New items the ledger took, by kind: unknown_* alert above 0; force posts are a share of clearings.",
            "short",
            (Query("cashback:reconciliation_items:increase1h", "{{kind}}"),),
        ),
        Panel(
            "Items recorded in the last 24 hours",
            "From the ledger (reconciliation_items), by kind.",
            "short",
            (Query(f"max by (kind) (cashback_reconciliation_items_last_day{{{API}}})", "{{kind}}"),),
        ),
        Panel(
            "Uncleared authorisations by age",
            "Purchases with pending cashback (not cleared, not expired), by age of their first pending.",
            "short",
            (Query(f"max by (age) (cashback_reconciliation_uncleared_authorisations{{{API}}})", "{{age}}"),),
            stacked=True,
        ),
        Panel(
            "Pending past its window",
            "Purchases still pending an hour after their auth_expiry_days (alerts above 0 for 30 minutes).",
            "short",
            (Query("cashback:reconciliation_pending_past_window:max", "past its window"),),
        ),
        Panel(
            "Oldest pending",
            "Age of the oldest pending cashback the ledger holds.",
            "s",
            (Query(f"max(cashback_reconciliation_oldest_pending_seconds{{{API}}})", "oldest"),),
        ),
        Panel(
            "Campaign budget left",
            "Share of each campaign budget left (the least any worker read).",
            "percentunit",
            (Query("cashback:campaign_budget:remaining_ratio", "{{budget}} {{unit}}"),),
        ),
        Panel(
            "Sink behind the accruals topic",
            "Accruals not yet in the ledger: the sink's consumer lag on the accruals topic, in messages.",
            "short",
            (Query(f"sum by (group) (max by (group, topic, partition) ({_ACCRUALS_LAG}))", "{{group}}"),),
        ),
    ),
)
