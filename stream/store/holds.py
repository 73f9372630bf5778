"""The ledger's side of the abuse controls (``stream.core.holds``), each one query: the rewards held
for review and a purchase's holds (the API's operations routes), and the merchants concentrating
rewards on few accounts (the sink's scan, ``stream.abuse_scan``) with the flags it recorded.

A hold is what one offer's share of one purchase has in the HELD book: the net of the entries that
move into it (HELD, or a chargeback reversal credited while flagged) and out of it (a release, a
forfeit, a refund's or a chargeback's clawback), grouped by the purchase's ref (``purchase_ref``:
a clawback's own transaction_ref is the refund's). Only entries that touch HELD are read, through
their own partial index (migration 0009), so the cost grows with the holds ever made, not with
the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import asyncpg

_HELD_REWARDS = """
WITH moves AS (
    SELECT account_id, purchase_ref, offer_id, reward_kind, currency::text AS currency,
        sum(book_movement('HELD', debit_book, credit_book, amount_minor))::bigint AS held_minor,
        max(entry_seq) FILTER (WHERE credit_book = 'HELD') AS hold_seq
    FROM ledger_entries
    WHERE (debit_book = 'HELD' OR credit_book = 'HELD') AND ($1::text IS NULL OR account_id = $1)
    GROUP BY account_id, purchase_ref, offer_id, reward_kind, currency
)
SELECT m.account_id, m.purchase_ref AS transaction_ref, m.offer_id, m.reward_kind, m.currency, m.held_minor, m.hold_seq,
    l.occurred_at AS held_at, l.merchant_id, l.explanation->>'reason' AS rule, l.explanation->>'detail' AS detail
FROM moves m JOIN ledger_entries l ON l.entry_seq = m.hold_seq
WHERE m.held_minor > 0 AND ($2::bigint IS NULL OR m.hold_seq < $2)
ORDER BY m.hold_seq DESC LIMIT $3
"""

# One purchase's holds, per offer's share: what is held now, the currency the purchase was billed in
# (an instruction names it), and the latest review of it.
_HOLDS_OF_PURCHASE = """
SELECT offer_id, reward_kind, currency::text AS currency,
    sum(book_movement('HELD', debit_book, credit_book, amount_minor))::bigint AS held_minor,
    (array_agg(explanation->>'basis_currency' ORDER BY entry_seq DESC) FILTER (WHERE credit_book = 'HELD'))[1] AS basis_currency,
    (array_agg(entry_kind ORDER BY entry_seq DESC) FILTER (WHERE entry_kind IN ('HOLD_RELEASED', 'HOLD_FORFEITED')))[1]
        AS reviewed
FROM ledger_entries
WHERE account_id = $1 AND purchase_ref = $2 AND (debit_book = 'HELD' OR credit_book = 'HELD')
    AND ($3::text IS NULL OR offer_id = $3)
GROUP BY offer_id, reward_kind, currency
ORDER BY offer_id, currency
"""

# Merchants whose confirmed rewards of the window, in one unit, went to few accounts and add up to
# the threshold of that unit; those with a live flag are left out (flagged once until it ends).
_CONCENTRATED = """
WITH thresholds AS (
    SELECT * FROM unnest($3::text[], $4::bigint[]) AS t(currency, min_total)
), rewards AS (
    SELECT l.merchant_id, l.currency::text AS currency, l.account_id, sum(l.amount_minor) AS amount
    FROM ledger_entries l
    WHERE l.entry_kind = 'CONFIRMED' AND l.merchant_id IS NOT NULL AND l.occurred_at > $1 AND l.occurred_at <= $2
    GROUP BY l.merchant_id, l.currency, l.account_id
)
SELECT r.merchant_id, r.currency, array_agg(r.account_id ORDER BY r.account_id) AS account_ids,
    sum(r.amount)::bigint AS total_minor
FROM rewards r JOIN thresholds t ON t.currency = r.currency
WHERE NOT EXISTS (
    SELECT FROM merchant_flags f WHERE f.merchant_id = r.merchant_id AND f.currency = r.currency AND f.until_at > $2)
GROUP BY r.merchant_id, r.currency, t.min_total
HAVING count(*) <= $5 AND sum(r.amount) >= t.min_total
ORDER BY r.merchant_id, r.currency
"""

_RECORD_FLAG = """
INSERT INTO merchant_flags (merchant_id, currency, window_from, window_to, accounts, total_minor, until_at, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING flag_seq
"""

_FLAGS = """
SELECT flag_seq, merchant_id, currency, window_from, window_to, accounts, total_minor, until_at, detail, flagged_at
FROM merchant_flags WHERE $1::bigint IS NULL OR flag_seq < $1 ORDER BY flag_seq DESC LIMIT $2
"""


async def held_rewards(db: asyncpg.Pool, account_id: str | None, before: int | None, limit: int) -> list[asyncpg.Record]:
    """Rewards held now, the latest held first (older than the ``before`` hold sequence if given)."""
    return list(await db.fetch(_HELD_REWARDS, account_id, before, limit))


async def holds_of_purchase(db: asyncpg.Pool, account_id: str, purchase_ref: str, offer_id: str | None) -> list[asyncpg.Record]:
    """Each share of the purchase that was ever held (one offer's if named): held now, and reviewed how."""
    return list(await db.fetch(_HOLDS_OF_PURCHASE, account_id, purchase_ref, offer_id))


async def concentrated_merchants(
    connection: asyncpg.Connection,
    window_from: datetime,
    window_to: datetime,
    max_accounts: int,
    min_total_minor: Mapping[str, int],
) -> list[asyncpg.Record]:
    currencies, totals = list(min_total_minor), list(min_total_minor.values())
    return list(await connection.fetch(_CONCENTRATED, window_from, window_to, currencies, totals, max_accounts))


async def record_flag(
    connection: asyncpg.Connection,
    merchant_id: str,
    currency: str,
    window: tuple[datetime, datetime],
    accounts: int,
    total_minor: int,
    until: datetime,
    detail: str,
) -> int:
    return int(await connection.fetchval(_RECORD_FLAG, merchant_id, currency, *window, accounts, total_minor, until, detail))


async def merchant_flags(db: asyncpg.Pool, before: int | None, limit: int) -> list[asyncpg.Record]:
    return list(await db.fetch(_FLAGS, before, limit))
