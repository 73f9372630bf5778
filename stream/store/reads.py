"""The balance API's reads of the ledger, each one query (the API itself holds no SQL)."""

from __future__ import annotations

import asyncpg

# Ledger entries and purchases that earned nothing, newest first, one sequence for both.
_HISTORY = """
SELECT * FROM (
    SELECT history_seq, accrual_id, source_event_id, transaction_ref, entry_kind, debit_book, credit_book,
        amount_minor, currency::text AS currency, reward_kind, offer_id, rule_version, occurred_at, recorded_at,
        explanation
    FROM ledger_entries WHERE account_id = $1 AND ($2::bigint IS NULL OR history_seq < $2)
    UNION ALL
    SELECT history_seq, accrual_id, source_event_id, transaction_ref, line_kind, 'NONE', 'NONE', 0,
        basis_currency::text, NULL, NULL, NULL, occurred_at, recorded_at,
        jsonb_build_object('reason', reason, 'detail', detail, 'basis_minor', basis_minor,
            'basis_currency', basis_currency, 'rate_bps', 0, 'rounding', 'down', 'carried_remainder', 0,
            'force_post', false)
    FROM purchases_not_earned WHERE account_id = $1 AND ($2::bigint IS NULL OR history_seq < $2)
        AND line_kind <> 'WALLET_MARK'  -- the worker's bookkeeping (stream.core.payouts), not the customer's
) AS lines
ORDER BY history_seq DESC LIMIT $3
"""


# An account is known once a ledger entry or a purchase that earned nothing names it (the sink writes
# an account's balances in the transaction of its first ledger entry, so this is asked only without them).
_SEEN = """
SELECT EXISTS (SELECT 1 FROM purchases_not_earned WHERE account_id = $1)
    OR EXISTS (SELECT 1 FROM ledger_entries WHERE account_id = $1)
"""


_CONFLICTS = """
SELECT conflict_seq, account_id, accrual_id, source_event_id, held_kind, arrived_kind, arrived_amount_minor,
    arrived_currency, detected_at
FROM ledger_conflicts WHERE $1::bigint IS NULL OR conflict_seq < $1 ORDER BY conflict_seq DESC LIMIT $2
"""


async def balances(db: asyncpg.Pool, account_id: str) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT * FROM balances WHERE account_id = $1 ORDER BY reward_kind, currency", account_id))


async def account_seen(db: asyncpg.Pool, account_id: str) -> bool:
    return bool(await db.fetchval(_SEEN, account_id))


async def history(db: asyncpg.Pool, account_id: str, before: int | None, limit: int) -> list[asyncpg.Record]:
    """The account's lines, newest first, older than the ``before`` sequence if given."""
    return list(await db.fetch(_HISTORY, account_id, before, limit))


async def donations(db: asyncpg.Pool, charity_id: str) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT * FROM charity_donations WHERE charity_id = $1 ORDER BY currency", charity_id))


async def ledger_conflicts(db: asyncpg.Pool, before: int | None, limit: int) -> list[asyncpg.Record]:
    return list(await db.fetch(_CONFLICTS, before, limit))
