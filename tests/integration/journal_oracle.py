"""The oracle of tests/integration/test_journal_verdicts.py: the journal's batch write as it was before it
looked ids up first and copied the new entries (one statement over a staging table, every verdict in SQL).
Kept verbatim, so that the journal of now is held to what it gave, batch for batch."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import asyncpg

from stream.store.journal import BatchResult
from stream.store.staged_rows import STAGING_COLUMNS

# Connections whose scratch tables exist (weak: a closed connection leaves).
_PREPARED: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()

# The batch's two scratch tables, made once per connection (temp tables live as long as the
# session; ON COMMIT DELETE ROWS empties them at each commit).
_CREATE_SCRATCH = """
CREATE TEMP TABLE IF NOT EXISTS incoming_accruals (
    position bigint, accrual_id text, source_event_id text, account_id text, transaction_ref text,
    entry_kind text, debit_book text, credit_book text, amount_minor bigint, currency text,
    reward_kind text, offer_id text, rule_version integer, occurred_at timestamptz,
    explanation jsonb, fingerprint text, beneficiary_id text, merchant_id text, purchase_ref text,
    sponsor_id text  -- staged (STAGING_COLUMNS), never written: the schema before 0016 has no such column
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS batch_deltas (
    account_id text, reward_kind text, currency text, pending bigint, confirmed bigint,
    available bigint, earned bigint, clawed_back bigint, donated bigint, held bigint, entries bigint
) ON COMMIT DELETE ROWS;
"""

# The staged batch in one statement (one round trip), all of it judged on one snapshot taken before it writes.
# The statement is prepared once per connection, so its plan must not depend on the ledger's size when prepared:
# the look-ups into the ledger are index probes (LATERAL ... LIMIT 1 is never flattened into a hash join).
# - found: entries whose id the account's ledger already holds with other content (another fingerprint, another
#   kind, or a NOT_EARNED line under an entry's id and the reverse; or the same id twice in this batch with other
#   content, the first one held): a bug or a re-used id upstream. They are recorded in ledger_conflicts, never
#   written, and returned by position for the sink to dead-letter;
# - inserted: the other entries, new ones only (an id the account's ledger holds is skipped: replays write
#   nothing), summed into per-balance deltas with the balance arithmetic of migration 0007, exactly the rows
#   inserted;
# - the purchases that earned nothing, their lines written the same way.
_WRITE_STAGED = """
WITH found AS (
    SELECT i.position, i.account_id, i.accrual_id, i.source_event_id, l.entry_kind AS held_kind, i.entry_kind,
        i.amount_minor, i.currency, i.fingerprint, i.explanation
    FROM incoming_accruals i CROSS JOIN LATERAL (  -- LIMIT: an index probe per row, never a scan of the ledger
        SELECT entry_kind, fingerprint FROM ledger_entries l
        WHERE l.account_id = i.account_id AND l.accrual_id = i.accrual_id LIMIT 1) l
    WHERE l.fingerprint <> i.fingerprint
    UNION ALL
    SELECT i.position, i.account_id, i.accrual_id, i.source_event_id, 'NOT_EARNED', i.entry_kind,
        i.amount_minor, i.currency, i.fingerprint, i.explanation
    FROM incoming_accruals i CROSS JOIN LATERAL (
        SELECT reason, detail FROM purchases_not_earned p
        WHERE p.account_id = i.account_id AND p.accrual_id = i.accrual_id LIMIT 1) p
    WHERE i.entry_kind <> 'NOT_EARNED'
       OR (p.reason, p.detail) IS DISTINCT FROM (i.explanation->>'reason', i.explanation->>'detail')
    UNION ALL  -- the same id twice in one batch, with other content: the first one is held
    SELECT i.position, i.account_id, i.accrual_id, i.source_event_id, e.entry_kind, i.entry_kind,
        i.amount_minor, i.currency, i.fingerprint, i.explanation
    FROM incoming_accruals i JOIN incoming_accruals e
        ON e.account_id = i.account_id AND e.accrual_id = i.accrual_id AND e.position < i.position
    WHERE e.fingerprint <> i.fingerprint
), recorded AS (
    INSERT INTO ledger_conflicts (account_id, accrual_id, source_event_id, held_kind, arrived_kind,
        arrived_amount_minor, arrived_currency, arrived_fingerprint, arrived)
    SELECT account_id, accrual_id, source_event_id, held_kind, entry_kind, amount_minor, currency, fingerprint, explanation
    FROM found
    ON CONFLICT (account_id, accrual_id, arrived_fingerprint) DO NOTHING
), accepted AS MATERIALIZED (
    SELECT * FROM incoming_accruals i WHERE NOT EXISTS (SELECT FROM found f WHERE f.position = i.position)
), inserted AS (
    INSERT INTO ledger_entries (accrual_id, source_event_id, account_id, transaction_ref, entry_kind,
        debit_book, credit_book, amount_minor, currency, reward_kind, offer_id, rule_version,
        occurred_at, explanation, fingerprint, beneficiary_id, merchant_id, purchase_ref)
    SELECT accrual_id, source_event_id, account_id, transaction_ref, entry_kind, debit_book,
        credit_book, amount_minor, currency, reward_kind, offer_id, rule_version, occurred_at,
        explanation, fingerprint, beneficiary_id, merchant_id, purchase_ref
    FROM accepted WHERE entry_kind <> 'NOT_EARNED' ORDER BY position
    ON CONFLICT (account_id, accrual_id) DO NOTHING
    RETURNING account_id, reward_kind, currency, entry_kind, debit_book, credit_book, amount_minor,
        explanation->>'reason' AS reason
), deltas AS (
    INSERT INTO batch_deltas
    SELECT account_id, reward_kind, currency,
        sum(book_movement('PENDING', debit_book, credit_book, amount_minor)),
        sum(book_movement('CONFIRMED', debit_book, credit_book, amount_minor)),
        sum(book_movement('AVAILABLE', debit_book, credit_book, amount_minor)),
        sum(earned_movement(entry_kind, amount_minor)),
        sum(clawed_back_movement(entry_kind, amount_minor)),
        sum(book_movement('DONATED', debit_book, credit_book, amount_minor)),
        sum(book_movement('HELD', debit_book, credit_book, amount_minor)),
        count(*)
    FROM inserted GROUP BY account_id, reward_kind, currency
    RETURNING entries
), refusals AS (
    INSERT INTO purchases_not_earned (accrual_id, source_event_id, account_id, transaction_ref, reason,
        detail, basis_minor, basis_currency, occurred_at)
    SELECT accrual_id, source_event_id, account_id, transaction_ref, explanation->>'reason',
        explanation->>'detail', (explanation->>'basis_minor')::bigint, explanation->>'basis_currency', occurred_at
    FROM accepted WHERE entry_kind = 'NOT_EARNED'
    ON CONFLICT (account_id, accrual_id) DO NOTHING
)
SELECT
    (SELECT coalesce(array_agg(DISTINCT position ORDER BY position), '{}') FROM found) AS conflicts,
    (SELECT coalesce(sum(entries), 0) FROM deltas)::bigint AS written,
    (SELECT count(*) FROM accepted WHERE entry_kind <> 'NOT_EARNED') AS ledger_rows,
    (SELECT coalesce(array_agg(entry_kind || ':' || coalesce(reason, '')), '{}') FROM inserted  -- for the metrics
        WHERE credit_book = 'HELD' OR entry_kind IN ('HOLD_RELEASED', 'HOLD_FORFEITED')) AS holds
"""

# Postgres checks CHECK constraints on the row an INSERT proposes before it resolves ON CONFLICT,
# so a negative delta cannot go through INSERT ... DO UPDATE: create missing rows at zero (safe
# against a concurrent sink), then add the deltas.
_ENSURE_BALANCES = """
INSERT INTO balances (account_id, reward_kind, currency)
SELECT account_id, reward_kind, currency FROM batch_deltas
ON CONFLICT (account_id, reward_kind, currency) DO NOTHING
"""

_APPLY_DELTAS = """
UPDATE balances AS b SET
    pending_minor = b.pending_minor + d.pending,
    confirmed_minor = b.confirmed_minor + d.confirmed,
    available_minor = b.available_minor + d.available,
    lifetime_earned_minor = b.lifetime_earned_minor + d.earned,
    clawed_back_minor = b.clawed_back_minor + d.clawed_back,
    donated_minor = b.donated_minor + d.donated,
    held_minor = b.held_minor + d.held,
    updated_at = now()
FROM batch_deltas AS d
WHERE b.account_id = d.account_id AND b.reward_kind = d.reward_kind AND b.currency = d.currency
"""


async def write_batch_before(connection: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> BatchResult:
    """Write one batch of staged accrual rows (``STAGING_COLUMNS`` order) in one transaction: the
    COPY into the staging table, one statement for the entries, one round trip for the balances."""
    fresh = connection not in _PREPARED
    async with connection.transaction():
        if fresh:
            await connection.execute(_CREATE_SCRATCH)
        await connection.copy_records_to_table("incoming_accruals", records=rows, columns=STAGING_COLUMNS)
        outcome = await connection.fetchrow(_WRITE_STAGED)
        if outcome["written"]:
            # two statements, one round trip: the UPDATE's own snapshot sees a row another sink created meanwhile
            await connection.execute(_ENSURE_BALANCES + ";" + _APPLY_DELTAS)
    if fresh:
        _PREPARED.add(connection)  # only once committed: a rolled-back batch took its CREATE with it
    written, ledger_rows = outcome["written"], outcome["ledger_rows"]
    return BatchResult(
        written=written, duplicates=ledger_rows - written, conflicts=tuple(outcome["conflicts"]), holds=tuple(outcome["holds"])
    )
