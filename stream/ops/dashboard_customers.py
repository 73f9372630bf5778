"""The money dashboard's customers row (``stream.ops.dashboard_panels``): what customers are told
(``stream.core.notices``: the notifications the workers send, per kind and language)."""

from __future__ import annotations

from stream.ops.panel_model import Panel, Query, Row
from stream.ops.selectors import RATE, WORKER

CUSTOMERS_ROW = Row(
    "Customers",
    (
        Panel(
            "Notifications sent",
            "Notifications the workers send on the notifications topic for bank apps to push (earned, confirmed, "
            "available, clawed back, expiring, paid), per kind and language. At least once: a redelivered event "
            "sends the same notification id again.",
            "ops",
            (
                Query(
                    f"sum by (kind, language) (rate(cashback_notifications_total{{{WORKER}}}[{RATE}]))",
                    "{{kind}} {{language}}",
                ),
            ),
            stacked=True,
        ),
    ),
)
