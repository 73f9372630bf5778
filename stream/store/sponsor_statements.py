"""Who pays (issue 12, part 6): a sponsor's monthly statement, read from the ledger.

Every entry of an offer's reward names who funds it (``ledger_entries.sponsor_id``, migration 0016): the offer's
merchant sponsor (offer v6's ``sponsor_id``, kept on the purchase's share, so a clawback, a recredit, a release or an
expiry carries the sponsor of the reward it moves), or NULL, the bank's own budget, whose statements are those of
the sponsor ``bank`` (``BANK_SPONSOR``).

A statement covers one calendar month in UTC, by the entry's event time (``occurred_at``, the card event that caused
it; not when the ledger recorded it), half-open ``[first day 00:00Z, next month's first day 00:00Z)``. Its lines are
per reward kind and unit (ISO 4217, or PTS: units are never added), and the same per offer. The figures are offer
results' (``stream.store.offer_results``), in ledger lines:

- ``booked``: what left the sponsor's ``EXPENSE`` book (pending created, confirmed without pending, recredited);
- ``returned``: what came back to it (pending released or expired, clawed back, forfeited, expired unused);
- ``net`` = booked - returned: the month's cost (offer results' ``cost``), pending included;
- ``pending``: of the net, the movement into ``PENDING`` in the month (negative when more left pending than came);
- ``owed`` = net - pending: the month's movement into the books past pending (confirmed, available, held,
  donated): what the sponsor owes for the month. A reward pending at the month's end is owed in the month it is
  confirmed; summed over every month, owed is the net cost of everything no longer pending;
- ``clawed_back``: clawbacks and forfeits less chargebacks reversed (part of ``returned``);
- ``purchases``: purchases first paid in the month (their first ``PENDING_CREATED`` or ``CONFIRMED`` entry of the
  offer in it: offer results' treated purchases), each once per line however many offers of the sponsor paid it.

``entries`` lists the ledger lines behind a statement, by ``entry_seq``, a page at a time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from stream.core.offer_parsing import BANK_SPONSOR, SPONSOR_ID

_MONTH = re.compile(r"(\d{4})-(\d{2})")
_KINDS_PAID = "('PENDING_CREATED', 'CONFIRMED')"
# Whose entries: a merchant sponsor's, or the bank's, those without a sponsor ($1 is NULL then: only its type is used).
_WHOSE_MERCHANT = "sponsor_id = $1"
_WHOSE_BANK = "sponsor_id IS NULL AND $1::text IS NULL"

_COSTS = """
SELECT offer_id, reward_kind, currency::text AS unit,
    coalesce(sum(amount_minor) FILTER (WHERE debit_book = 'EXPENSE'), 0)::bigint AS booked,
    coalesce(sum(amount_minor) FILTER (WHERE credit_book = 'EXPENSE'), 0)::bigint AS returned,
    sum(book_movement('PENDING', debit_book, credit_book, amount_minor))::bigint AS pending,
    sum(clawed_back_movement(entry_kind, amount_minor))::bigint AS clawed_back,
    count(*) AS entries
FROM ledger_entries
WHERE {whose} AND occurred_at >= $2 AND occurred_at < $3
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""

# Purchases first paid in the month: paid by an entry in it, and by none of the same offer before it.
_PURCHASES = f"""
WITH firsts AS (
    SELECT DISTINCT l.offer_id, l.reward_kind, l.currency::text AS unit, l.account_id,
        coalesce(l.purchase_ref, l.transaction_ref) AS purchase
    FROM ledger_entries l
    WHERE {{whose}} AND l.occurred_at >= $2 AND l.occurred_at < $3 AND l.entry_kind IN {_KINDS_PAID}
        AND NOT EXISTS (
            SELECT 1 FROM ledger_entries e
            WHERE e.account_id = l.account_id AND e.offer_id = l.offer_id AND e.entry_kind IN {_KINDS_PAID}
                AND coalesce(e.purchase_ref, e.transaction_ref) = coalesce(l.purchase_ref, l.transaction_ref)
                AND e.occurred_at < $2)
)
SELECT offer_id, reward_kind, unit, GROUPING(offer_id) AS level, count(DISTINCT (account_id, purchase)) AS purchases
FROM firsts
GROUP BY GROUPING SETS ((offer_id, reward_kind, unit), (reward_kind, unit))
"""

_ENTRIES = """
SELECT entry_seq, accrual_id, account_id, offer_id, rule_version, entry_kind, debit_book, credit_book, amount_minor,
    currency::text AS unit, reward_kind, occurred_at, merchant_id, coalesce(purchase_ref, transaction_ref) AS purchase_ref
FROM ledger_entries
WHERE {whose} AND occurred_at >= $2 AND occurred_at < $3 AND entry_seq > $4
ORDER BY entry_seq
LIMIT $5
"""

# Whether the ledger names the merchant sponsor at all (the index of migration 0016 answers it).
_KNOWN = "SELECT EXISTS (SELECT 1 FROM ledger_entries WHERE sponsor_id = $1)"


class MonthError(ValueError):
    """A month that is not ``YYYY-MM``; the message says what was given and what is expected."""


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` as its UTC bounds ``[first day, next month's first day)``; MonthError otherwise."""
    found = _MONTH.fullmatch(month)
    if found is None:
        raise MonthError(f"month must be YYYY-MM (2026-12), not {month!r}")
    year, number = int(found[1]), int(found[2])
    if not 1 <= number <= 12 or not 1 <= year <= 9998:
        raise MonthError(f"month must be YYYY-MM with a month 01 to 12 and a year 0001 to 9998, not {month!r}")
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return start, end


def is_sponsor_id(sponsor_id: str) -> bool:
    """Whether ``sponsor_id`` could name a sponsor: ``bank``, or a merchant sponsor's id (offer v6)."""
    return sponsor_id == BANK_SPONSOR or (SPONSOR_ID.fullmatch(sponsor_id) is not None and sponsor_id.lower() != BANK_SPONSOR)


@dataclass(frozen=True, slots=True)
class Figures:
    """One line of a statement: one reward kind and unit (of one offer, or of all of them)."""

    reward_kind: str
    unit: str  # ISO 4217, or PTS
    booked_minor: int = 0
    returned_minor: int = 0
    pending_minor: int = 0
    clawed_back_minor: int = 0
    purchases: int = 0
    entries: int = 0

    @property
    def net_minor(self) -> int:
        return self.booked_minor - self.returned_minor

    @property
    def owed_minor(self) -> int:
        return self.net_minor - self.pending_minor


@dataclass(slots=True)
class Statement:
    sponsor_id: str
    month: str
    start: datetime
    end: datetime
    lines: list[Figures] = field(default_factory=list)  # per (reward kind, unit), in that order
    offers: dict[str, list[Figures]] = field(default_factory=dict)  # per offer id (sorted), its lines

    @property
    def offer_ids(self) -> list[str]:
        return sorted(self.offers)


def assemble(sponsor_id: str, month: str, costs: Sequence[dict[str, Any]], purchases: Sequence[dict[str, Any]]) -> Statement:
    """A statement from the rows of ``_COSTS`` (per offer, kind and unit) and ``_PURCHASES`` (the same, level 0, and
    per kind and unit, level 1): the totals are the offers' lines added up per kind and unit, never across units."""
    start, end = month_bounds(month)
    counted = {(r["offer_id"], r["reward_kind"], r["unit"]): r["purchases"] for r in purchases if r["level"] == 0}
    counted_all = {(r["reward_kind"], r["unit"]): r["purchases"] for r in purchases if r["level"] == 1}
    statement = Statement(sponsor_id, month, start, end)
    totals: dict[tuple[str, str], list[int]] = {}
    for row in costs:
        key = (row["reward_kind"], row["unit"])
        figures = Figures(
            row["reward_kind"],
            row["unit"],
            row["booked"],
            row["returned"],
            row["pending"],
            row["clawed_back"],
            counted.get((row["offer_id"], *key), 0),
            row["entries"],
        )
        statement.offers.setdefault(row["offer_id"] or "", []).append(figures)
        total = totals.setdefault(key, [0, 0, 0, 0, 0])
        for n, value in enumerate(
            (figures.booked_minor, figures.returned_minor, figures.pending_minor, figures.clawed_back_minor, figures.entries)
        ):
            total[n] += value
    for key in sorted(totals):
        booked, returned, pending, clawed_back, entries = totals[key]
        statement.lines.append(Figures(*key, booked, returned, pending, clawed_back, counted_all.get(key, 0), entries))
    statement.offers = {
        offer_id: sorted(lines, key=lambda f: (f.reward_kind, f.unit)) for offer_id, lines in sorted(statement.offers.items())
    }
    return statement


def _whose(sql: str, sponsor_id: str) -> tuple[str, str | None]:
    """The query for ``sponsor_id`` and its first argument: the bank's entries are those without a sponsor."""
    if sponsor_id == BANK_SPONSOR:
        return sql.format(whose=_WHOSE_BANK), None
    return sql.format(whose=_WHOSE_MERCHANT), sponsor_id


async def statement(db: asyncpg.Pool | asyncpg.Connection, sponsor_id: str, month: str) -> Statement:
    """``sponsor_id``'s statement for ``month`` (``YYYY-MM``, MonthError otherwise); lines only where the ledger has
    entries of the sponsor in the month."""
    start, end = month_bounds(month)
    costs_sql, whose = _whose(_COSTS, sponsor_id)
    purchases_sql, _ = _whose(_PURCHASES, sponsor_id)
    costs = [dict(r) for r in await db.fetch(costs_sql, whose, start, end)]
    purchases = [dict(r) for r in await db.fetch(purchases_sql, whose, start, end)]
    return assemble(sponsor_id, month, costs, purchases)


async def entries(
    db: asyncpg.Pool | asyncpg.Connection, sponsor_id: str, month: str, after: int, limit: int
) -> list[dict[str, Any]]:
    """The ledger lines behind ``sponsor_id``'s statement for ``month``, after ``entry_seq`` ``after``, at most
    ``limit``, in ``entry_seq`` order (the next page starts after the last one's)."""
    start, end = month_bounds(month)
    sql, whose = _whose(_ENTRIES, sponsor_id)
    return [dict(r) for r in await db.fetch(sql, whose, start, end, after, limit)]


async def known(db: asyncpg.Pool | asyncpg.Connection, sponsor_id: str) -> bool:
    """Whether the ledger names the sponsor (``bank`` always is)."""
    return sponsor_id == BANK_SPONSOR or bool(await db.fetchval(_KNOWN, sponsor_id))
