"""The ledger's side of a GDPR request: what it holds of one account (the export's balances, every
history line with its explanation, the entries refused for it), and its erasure through the one
database function that may change the append-only tables (``erase_account``, migration 0008: the
account's rows move to a random pseudonym with every amount kept, and the erasure log records who,
when and why, never the account id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

# Every line of the account, the oldest first: ledger entries and purchases that earned nothing,
# each with its explanation (the API's history, without the page).
_EVERY_LINE = """
SELECT * FROM (
    SELECT history_seq, accrual_id, source_event_id, transaction_ref, entry_kind, debit_book, credit_book,
        amount_minor, currency::text AS currency, reward_kind, offer_id, rule_version, beneficiary_id,
        occurred_at, recorded_at, explanation
    FROM ledger_entries WHERE account_id = $1
    UNION ALL
    SELECT history_seq, accrual_id, source_event_id, transaction_ref, line_kind, 'NONE', 'NONE', 0,
        basis_currency::text, NULL, NULL, NULL, NULL, occurred_at, recorded_at,
        jsonb_build_object('reason', reason, 'detail', detail, 'basis_minor', basis_minor,
            'basis_currency', basis_currency, 'rate_bps', 0, 'rounding', 'down', 'carried_remainder', 0,
            'force_post', false)
    FROM purchases_not_earned WHERE account_id = $1
) AS lines
ORDER BY history_seq
"""

_ITEMS = """
SELECT item_id, kind, transaction_ref, purchase_ref, amount_minor, currency::text AS currency, occurred_at, recorded_at, detail
FROM reconciliation_items WHERE account_id = $1 ORDER BY item_seq
"""

_REFUSED_ENTRIES = """
SELECT accrual_id, source_event_id, held_kind, arrived_kind, arrived_amount_minor, arrived_currency::text AS arrived_currency,
    detected_at
FROM ledger_conflicts WHERE account_id = $1 ORDER BY conflict_seq
"""


@dataclass(frozen=True, slots=True)
class LedgerHoldings:
    """What the ledger holds of one account."""

    balances: list[dict[str, Any]]
    history: list[dict[str, Any]]  # every line, the oldest first, its explanation a mapping
    refused_entries: list[dict[str, Any]]  # entries that arrived with an id its ledger holds with other content
    items: list[dict[str, Any]]  # its reconciliation items (migration 0011), the oldest first

    def empty(self) -> bool:
        return not (self.balances or self.history or self.refused_entries or self.items)


@dataclass(frozen=True, slots=True)
class Erasure:
    """One row of the erasure log: never the account id."""

    erasure_id: UUID
    erased_at: datetime
    erased_by: str
    database_user: str
    reason: str
    pseudonym: str | None  # None: the ledger held no row of the account (already erased, or never seen)
    ledger_rows: int
    not_earned_rows: int
    balance_rows: int
    conflict_rows: int
    budget_rows: int
    reconciliation_rows: int = 0  # reconciliation items (migration 0011)

    @classmethod
    def of(cls, row: asyncpg.Record) -> Erasure:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


async def holdings(db: asyncpg.Pool | asyncpg.Connection, account_id: str) -> LedgerHoldings:
    """The account's balances, every history line and its refused entries, read in one snapshot."""

    async def read(connection: asyncpg.Connection) -> LedgerHoldings:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            balances = await connection.fetch(
                "SELECT * FROM balances WHERE account_id = $1 ORDER BY reward_kind, currency",
                account_id,
            )
            lines = await connection.fetch(_EVERY_LINE, account_id)
            refused = await connection.fetch(_REFUSED_ENTRIES, account_id)
            items = await connection.fetch(_ITEMS, account_id)
        history = [{**dict(line), "explanation": json.loads(line["explanation"])} for line in lines]
        return LedgerHoldings([dict(b) for b in balances], history, [dict(r) for r in refused], [dict(i) for i in items])

    if isinstance(db, asyncpg.Connection):
        return await read(db)
    async with db.acquire() as connection:
        return await read(connection)


async def is_erased(db: asyncpg.Pool | asyncpg.Connection, account_id: str) -> bool:
    """Whether the account was erased (its digest is in ``erased_accounts``)."""
    return bool(
        await db.fetchval(
            "SELECT EXISTS (SELECT FROM erased_accounts WHERE account_digest = erased_account_digest($1))", account_id
        )
    )


async def erase(db: asyncpg.Pool | asyncpg.Connection, account_id: str, reason: str, operator: str) -> Erasure:
    """Pseudonymise every ledger row of the account and log it, in one transaction
    (``erase_account``). Raises ``asyncpg.InvalidParameterValueError`` for an empty reason or
    operator, or an id that is already a pseudonym."""
    row = await db.fetchrow("SELECT * FROM erase_account($1, $2, $3)", account_id, reason, operator)
    assert row is not None  # the function returns its log row
    return Erasure.of(row)
