"""The balance API's reads of redemptions (``stream.api_redemptions``): one redemption of one account as
the ledger holds it, its REDEEMED entry or its REDEMPTION_REFUSED line (migration 0018), by its id."""

from __future__ import annotations

import asyncpg

_REDEMPTION = """
SELECT 'REDEEMED' AS status, amount_minor, currency::text AS unit, explanation->>'reason' AS reason,
    explanation->>'detail' AS detail, occurred_at, recorded_at
FROM ledger_entries WHERE account_id = $1 AND transaction_ref = $2 AND entry_kind = 'REDEEMED'
UNION ALL
SELECT 'REFUSED', basis_minor, basis_currency::text, reason, detail, occurred_at, recorded_at
FROM purchases_not_earned WHERE account_id = $1 AND transaction_ref = $2 AND line_kind = 'REDEMPTION_REFUSED'
LIMIT 1
"""

_BALANCE = """
SELECT * FROM balances WHERE account_id = $1 AND reward_kind = $2 AND currency = $3
"""


async def redemption(db: asyncpg.Pool, account_id: str, redemption_id: str) -> asyncpg.Record | None:
    """The ledger's record of the redemption (None: not there, yet or ever)."""
    return await db.fetchrow(_REDEMPTION, account_id, redemption_id)


async def balance(db: asyncpg.Pool, account_id: str, reward_kind: str, unit: str) -> asyncpg.Record | None:
    """The account's balance of that kind and unit now (None: it has none)."""
    return await db.fetchrow(_BALANCE, account_id, reward_kind, unit)
