"""The ledger's side of reconciliation (migration 0011), each one query: the items behind a count, for the
operations listing, and the figures of the reconciliation gauges (``stream.reconciliation``).

- The listing reads ``reconciliation_items`` by kind, the latest first, a keyset page on ``item_seq`` (its own
  index): the cost of a page does not grow with the table.
- The gauges read ``open_pending`` (one row per purchase and offer with pending cashback now, kept exact by the
  ledger's own statement trigger), never the ledger: its size is the authorisations not cleared yet, not the
  history. And the items of the last day, through their index on ``recorded_at``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import asyncpg

DAY_S = 86_400
# The age buckets of the uncleared authorisations (label ``age``): a fixed list, upper bounds in days.
AGE_BUCKETS: tuple[tuple[str, float], ...] = (("lt_1d", 1), ("1d_to_7d", 7), ("7d_to_30d", 30), ("ge_30d", float("inf")))
DEFAULT_WINDOW_DAYS = 30  # an offer's auth_expiry_days when it says none (stream.core.offers), or is gone from the book
CLOCK_GRACE_S = 3_600  # past its window: an hour after it ended, time for the worker's clock to tick and the sink to write

_ITEMS = """
SELECT item_seq, item_id, kind, account_id, transaction_ref, purchase_ref, amount_minor, currency::text AS currency,
    occurred_at, recorded_at, detail,
    kind = 'force_post' AND EXISTS (
        SELECT 1 FROM reconciliation_items late
        WHERE late.account_id = r.account_id AND late.transaction_ref = r.transaction_ref AND late.kind = 'late_authorisation'
    ) AS authorised_later
FROM reconciliation_items r
WHERE kind = $1 AND ($2::text IS NULL OR account_id = $2) AND ($3::bigint IS NULL OR item_seq < $3)
ORDER BY item_seq DESC LIMIT $4
"""

_ITEMS_SINCE = "SELECT kind, count(*) AS items FROM reconciliation_items WHERE recorded_at > $1 GROUP BY kind"

# Per purchase: the earliest pending and the longest window of its offers (the engine expires a purchase's
# pending at its authorisation plus the longest auth_expiry_days of its offers: stream.core.lifecycle); then per
# age bucket (``width_bucket`` over the buckets' bounds: 0 below the first), counted in Postgres.
_PENDING = """
WITH windows AS (
    SELECT * FROM unnest($1::text[], $2::int[]) AS w(offer_id, days)
), purchases AS (
    SELECT extract(epoch FROM $4::timestamptz - min(o.since))::float8 AS age_s, max(coalesce(w.days, $3)) AS days
    FROM open_pending o LEFT JOIN windows w ON w.offer_id = o.offer_id
    GROUP BY o.account_id, o.purchase_ref
)
SELECT width_bucket(age_s, $5::float8[]) AS bucket, count(*) AS purchases,
    count(*) FILTER (WHERE age_s > days * 86400.0 + $6) AS past_window, max(age_s) AS oldest_s
FROM purchases GROUP BY 1
"""


@dataclass(frozen=True, slots=True)
class PendingFigures:
    uncleared: dict[str, int]  # purchases with pending cashback, by age bucket (every bucket, 0 included)
    past_window: int  # of them, those still pending an hour after their window ended
    oldest_s: float  # the oldest pending's age (0: none)


async def items(
    db: asyncpg.Pool | asyncpg.Connection, kind: str, account_id: str | None, before: int | None, limit: int
) -> list[asyncpg.Record]:
    """A page of one kind's items, the latest first (``before``: the previous page's last ``item_seq``)."""
    return list(await db.fetch(_ITEMS, kind, account_id, before, limit))


async def items_since(db: asyncpg.Pool | asyncpg.Connection, since: datetime) -> dict[str, int]:
    """How many items of each kind the ledger recorded after ``since``."""
    return {row["kind"]: row["items"] for row in await db.fetch(_ITEMS_SINCE, since)}


async def pending(db: asyncpg.Pool | asyncpg.Connection, windows: Mapping[str, int], now: datetime) -> PendingFigures:
    """The figures of the pending cashback the ledger holds as of ``now``; ``windows``: each offer's
    auth_expiry_days (an offer not in it: ``DEFAULT_WINDOW_DAYS``). Ages are from the event time of the
    purchase's first entry into PENDING."""
    bounds = [days * DAY_S for _, days in AGE_BUCKETS[:-1]]
    rows = await db.fetch(_PENDING, list(windows), list(windows.values()), DEFAULT_WINDOW_DAYS, now, bounds, CLOCK_GRACE_S)
    uncleared = dict.fromkeys((name for name, _ in AGE_BUCKETS), 0)
    for row in rows:
        uncleared[AGE_BUCKETS[row["bucket"]][0]] = row["purchases"]
    past = sum(row["past_window"] for row in rows)
    oldest = max((row["oldest_s"] for row in rows), default=0.0)
    return PendingFigures(uncleared, past, max(0.0, oldest))
