"""The ledger's side of offer results (issue 12): per offer, the purchases of its treated and holdout groups and
what it cost, each one query over many offers at once (the API's route asks for one, its gauges for every live one).

Definitions, in ledger lines (README "Offer results"; ``stream.offer_results`` says why):

- **treated purchase** of an offer: a purchase (account, ``purchase_ref``, or the entry's own ``transaction_ref``
  for an entry made before purchase refs were kept) with a ledger entry of that offer of kind ``PENDING_CREATED`` or
  ``CONFIRMED``: the offer paid it. Counted once, at its *first* such entry: that entry's event time is the
  purchase's time (for the period), its explanation's ``basis_minor`` / ``basis_currency`` its spend (the amount the
  offer was computed on: the authorised amount less cash at the till; the first clearing's for an offer that accrues
  on clearing, and for a force post).
- **holdout purchase**: a purchase with a ``purchases_not_earned`` line of reason ``holdout`` naming the offer
  (``offer_id``, migration 0013): written once at the purchase's judgement, its basis the same amount as above.
  Counted once (the first such line), at that line's event time.
- **accounts**: distinct accounts with at least one purchase of the group in the period; ``eligible``: of either group.
- **cost**: the offer's ledger entries whose event time is in the period, per reward kind and unit: ``booked`` what
  left the sponsor's ``EXPENSE`` book (pending created, confirmed without pending, chargebacks reversed),
  ``returned`` what came back to it (pending released or expired, clawed back, forfeited), ``cost`` the difference;
  ``pending`` of that cost, still pending; ``clawed_back`` clawbacks and forfeits less chargebacks reversed.

Periods are half-open, ``[from, to)``, by event time (``occurred_at``); None: unbounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

TREATED, HOLDOUT = "treated", "holdout"
GROUPS = (TREATED, HOLDOUT)

# Each purchase once per offer and group (DISTINCT ON: its first line), then counted per (offer, group, currency), per
# (offer, group) and per offer (GROUPING SETS: distinct accounts cannot be added up across currencies or groups).
_PURCHASES = """
WITH treated AS (
    SELECT DISTINCT ON (offer_id, account_id, coalesce(purchase_ref, transaction_ref))
        offer_id, account_id, occurred_at, (explanation->>'basis_minor')::bigint AS basis,
        explanation->>'basis_currency' AS currency
    FROM ledger_entries
    WHERE offer_id = ANY($1::text[]) AND entry_kind IN ('PENDING_CREATED', 'CONFIRMED')
    ORDER BY offer_id, account_id, coalesce(purchase_ref, transaction_ref), occurred_at, entry_seq
), held AS (
    SELECT DISTINCT ON (offer_id, account_id, transaction_ref)
        offer_id, account_id, occurred_at, basis_minor AS basis, basis_currency::text AS currency
    FROM purchases_not_earned
    WHERE offer_id = ANY($1::text[]) AND reason = 'holdout'
    ORDER BY offer_id, account_id, transaction_ref, occurred_at, history_seq
), purchases AS (
    SELECT 'treated' AS grp, * FROM treated UNION ALL SELECT 'holdout', * FROM held
)
SELECT offer_id, grp, currency, GROUPING(grp, currency) AS level,
    count(DISTINCT account_id) AS accounts, count(*) AS purchases, sum(basis)::bigint AS spend
FROM purchases
WHERE ($2::timestamptz IS NULL OR occurred_at >= $2) AND ($3::timestamptz IS NULL OR occurred_at < $3)
GROUP BY GROUPING SETS ((offer_id, grp, currency), (offer_id, grp), (offer_id))
"""

_COST = """
SELECT offer_id, reward_kind, currency::text AS unit,
    coalesce(sum(amount_minor) FILTER (WHERE debit_book = 'EXPENSE'), 0)::bigint AS booked,
    coalesce(sum(amount_minor) FILTER (WHERE credit_book = 'EXPENSE'), 0)::bigint AS returned,
    sum(book_movement('PENDING', debit_book, credit_book, amount_minor))::bigint AS pending,
    sum(clawed_back_movement(entry_kind, amount_minor))::bigint AS clawed_back
FROM ledger_entries
WHERE offer_id = ANY($1::text[])
    AND ($2::timestamptz IS NULL OR occurred_at >= $2) AND ($3::timestamptz IS NULL OR occurred_at < $3)
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""

# Whether the ledger names the offer at all (an offer gone from the book still has its results).
_KNOWN = """
SELECT EXISTS (SELECT 1 FROM purchases_not_earned WHERE offer_id = $1)
    OR EXISTS (SELECT 1 FROM ledger_entries WHERE offer_id = $1)
"""


@dataclass(frozen=True, slots=True)
class Purchases:
    accounts: int = 0
    purchases: int = 0
    spend_minor: int = 0


@dataclass(frozen=True, slots=True)
class Cost:
    reward_kind: str
    unit: str  # ISO 4217, or PTS
    booked_minor: int
    returned_minor: int
    pending_minor: int
    clawed_back_minor: int

    @property
    def cost_minor(self) -> int:
        return self.booked_minor - self.returned_minor


@dataclass(slots=True)
class OfferFigures:
    """One offer's figures over a period (module doc)."""

    eligible_accounts: int = 0
    accounts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0))  # per group, every currency
    by_currency: dict[str, dict[str, Purchases]] = field(default_factory=dict)  # currency -> group -> purchases
    costs: list[Cost] = field(default_factory=list)

    def group(self, currency: str, group: str) -> Purchases:
        return self.by_currency.get(currency, {}).get(group, Purchases())


async def figures(
    db: asyncpg.Pool | asyncpg.Connection, offer_ids: Sequence[str], start: datetime | None, end: datetime | None
) -> dict[str, OfferFigures]:
    """The figures of each of ``offer_ids`` over ``[start, end)`` (None: unbounded); every offer asked for is in the
    answer (with zeros when the ledger has nothing of it)."""
    ids = list(offer_ids)
    out = {offer_id: OfferFigures() for offer_id in ids}
    for row in await db.fetch(_PURCHASES, ids, start, end):
        found = out[row["offer_id"]]
        if row["level"] == 0:  # (offer, group, currency)
            found.by_currency.setdefault(row["currency"], {})[row["grp"]] = Purchases(
                row["accounts"], row["purchases"], row["spend"]
            )
        elif row["level"] == 1:  # (offer, group)
            found.accounts[row["grp"]] = row["accounts"]
        else:  # (offer): either group
            found.eligible_accounts = row["accounts"]
    for row in await db.fetch(_COST, ids, start, end):
        out[row["offer_id"]].costs.append(
            Cost(row["reward_kind"], row["unit"], row["booked"], row["returned"], row["pending"], row["clawed_back"])
        )
    return out


async def known(db: asyncpg.Pool | asyncpg.Connection, offer_id: str) -> bool:
    """Whether the ledger names the offer (a line of either kind)."""
    return bool(await db.fetchval(_KNOWN, offer_id))
