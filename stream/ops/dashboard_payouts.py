"""The money dashboard's payouts row (``stream.ops.dashboard_panels``): payouts asked of the bank's core banking
system and not answered yet, and how long the oldest has waited, per beneficiary (customers' cash, charities'
remittances), as the API computes them from the payouts table; remittances recorded and answers read."""

from __future__ import annotations

from stream.ops.panel_model import Panel, Query, Row
from stream.ops.selectors import API, RATE, SINKS

PAYOUTS_ROW = Row(
    "Payouts",
    (
        Panel(
            "Payouts unanswered",
            "Payouts asked of the bank's core banking system with no answer yet, customers' and charities' "
            "(GET /v1/operations/payouts?status=REQUESTED lists them).",
            "short",
            (Query(f"max by (beneficiary) (cashback_payouts_unanswered{{{API}}})", "{{beneficiary}}"),),
        ),
        Panel(
            "Oldest unanswered payout",
            "How long the oldest unanswered payout has waited (CashbackPayoutUnanswered past 4 hours).",
            "s",
            (Query(f"max by (beneficiary) (cashback_payout_oldest_unanswered_seconds{{{API}}})", "{{beneficiary}}"),),
        ),
        Panel(
            "Payout answers",
            "The core banking system's answers read into the payouts table, per beneficiary and status.",
            "short",
            (
                Query(
                    f"sum by (beneficiary, status) (rate(cashback_payout_answers_total{{{SINKS}}}[{RATE}]))",
                    "{{beneficiary}} {{status}}",
                ),
            ),
        ),
        Panel(
            "Charity remittances",
            "Remittances of donations to charities recorded by the sinks' scheduled runs (DONATION_SCHEDULE); "
            "GET /v1/charities/{id}/remittances lists them, the command's runs included.",
            "short",
            (Query(f"sum(increase(cashback_donation_remittances_total{{{SINKS}}}[{RATE}]))", "recorded"),),
        ),
    ),
)
