"""Postgres: migrations, the batch write of accruals, and the reads of the balance API.

The SQL here and ``stream.rules.balances`` compute balances by the same rules; the tests hold them
equal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "deploy" / "migrations"
_MIGRATION_LOCK = 0x636173686261636B  # "cashback": one migrator at a time across processes


async def migrate(connection: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the SQL files of ``directory`` not applied yet, in name order, each in a transaction.
    Safe to call from several processes at once. Returns the names applied."""
    applied: list[str] = []
    await connection.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["name"] for row in await connection.fetch("SELECT name FROM schema_migrations")}
        for path in sorted(directory.glob("*.sql")):
            if path.name in done:
                continue
            async with connection.transaction():
                await connection.execute(path.read_text())
                await connection.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
            applied.append(path.name)
            log.info("applied migration %s", path.name)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def pending_migrations(connection: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    exists = await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = {r["name"] for r in await connection.fetch("SELECT name FROM schema_migrations")} if exists else set()
    return [p.name for p in sorted(directory.glob("*.sql")) if p.name not in done]


# Columns of the staging table, in the order the sink hands rows over.
STAGING_COLUMNS = (
    "position", "accrual_id", "source_event_id", "account_id", "transaction_ref", "entry_kind",
    "debit_book", "credit_book", "amount_minor", "currency", "reward_kind", "offer_id",
    "rule_version", "occurred_at", "explanation", "fingerprint",
)

_CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS incoming_accruals (
    position bigint, accrual_id text, source_event_id text, account_id text, transaction_ref text,
    entry_kind text, debit_book text, credit_book text, amount_minor bigint, currency text,
    reward_kind text, offer_id text, rule_version integer, occurred_at timestamptz,
    explanation jsonb, fingerprint text
) ON COMMIT DELETE ROWS
"""

# Insert new entries (a known accrual_id is skipped: replays write nothing) and fold exactly the
# inserted rows into the balances, in one statement.
_WRITE_ENTRIES = """
WITH inserted AS (
    INSERT INTO ledger_entries (accrual_id, source_event_id, account_id, transaction_ref, entry_kind,
        debit_book, credit_book, amount_minor, currency, reward_kind, offer_id, rule_version,
        occurred_at, explanation, fingerprint)
    SELECT accrual_id, source_event_id, account_id, transaction_ref, entry_kind, debit_book,
        credit_book, amount_minor, currency, reward_kind, offer_id, rule_version, occurred_at,
        explanation, fingerprint
    FROM incoming_accruals WHERE entry_kind <> 'NOT_EARNED' ORDER BY position
    ON CONFLICT (accrual_id) DO NOTHING
    RETURNING account_id, reward_kind, currency, entry_kind, debit_book, credit_book, amount_minor
), deltas AS (
    SELECT account_id, reward_kind, currency,
        sum(CASE WHEN credit_book = 'PENDING' THEN amount_minor WHEN debit_book = 'PENDING' THEN -amount_minor ELSE 0 END) AS pending,
        sum(CASE WHEN credit_book = 'CONFIRMED' THEN amount_minor WHEN debit_book = 'CONFIRMED' THEN -amount_minor ELSE 0 END) AS confirmed,
        sum(CASE WHEN credit_book = 'AVAILABLE' THEN amount_minor WHEN debit_book = 'AVAILABLE' THEN -amount_minor ELSE 0 END) AS available,
        sum(CASE WHEN entry_kind IN ('CONFIRMED', 'RECREDITED') THEN amount_minor ELSE 0 END) AS earned,
        sum(CASE WHEN entry_kind = 'CLAWED_BACK' THEN amount_minor ELSE 0 END) AS clawed_back,
        count(*) AS entries
    FROM inserted GROUP BY account_id, reward_kind, currency
), upserted AS (
    INSERT INTO balances AS b (account_id, reward_kind, currency, pending_minor, confirmed_minor,
        available_minor, lifetime_earned_minor, clawed_back_minor)
    SELECT account_id, reward_kind, currency, pending, confirmed, available, earned, clawed_back FROM deltas
    ON CONFLICT (account_id, reward_kind, currency) DO UPDATE SET
        pending_minor = b.pending_minor + EXCLUDED.pending_minor,
        confirmed_minor = b.confirmed_minor + EXCLUDED.confirmed_minor,
        available_minor = b.available_minor + EXCLUDED.available_minor,
        lifetime_earned_minor = b.lifetime_earned_minor + EXCLUDED.lifetime_earned_minor,
        clawed_back_minor = b.clawed_back_minor + EXCLUDED.clawed_back_minor,
        updated_at = now()
    RETURNING 1
)
SELECT coalesce((SELECT sum(entries) FROM deltas), 0)::bigint
"""

_WRITE_NOT_EARNED = """
INSERT INTO purchases_not_earned (accrual_id, source_event_id, account_id, transaction_ref, reason,
    detail, basis_minor, basis_currency, occurred_at)
SELECT accrual_id, source_event_id, account_id, transaction_ref, explanation->>'reason',
    explanation->>'detail', (explanation->>'basis_minor')::bigint, explanation->>'basis_currency', occurred_at
FROM incoming_accruals WHERE entry_kind = 'NOT_EARNED'
ON CONFLICT (accrual_id) DO NOTHING
"""

_COUNT_CONFLICTS = """
SELECT count(*) FROM incoming_accruals i JOIN ledger_entries l USING (accrual_id)
WHERE l.fingerprint <> i.fingerprint
"""


@dataclass(frozen=True, slots=True)
class BatchResult:
    written: int  # new ledger entries
    duplicates: int  # entries already in the ledger, identical: replays
    conflicts: int  # entries whose id is in the ledger with other content: alerted, never written


async def write_batch(connection: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> BatchResult:
    """Write one batch of staged accrual rows (``STAGING_COLUMNS`` order) in one transaction."""
    async with connection.transaction():
        await connection.execute(_CREATE_STAGING)
        await connection.copy_records_to_table("incoming_accruals", records=rows, columns=STAGING_COLUMNS)
        conflicts = await connection.fetchval(_COUNT_CONFLICTS)
        written = await connection.fetchval(_WRITE_ENTRIES)
        await connection.execute(_WRITE_NOT_EARNED)
    ledger_rows = sum(1 for row in rows if row[5] != "NOT_EARNED")
    return BatchResult(written=written, duplicates=ledger_rows - written - conflicts, conflicts=conflicts)
