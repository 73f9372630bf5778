"""The ledger's open_pending fold (migration 0023) deletes the purchases whose pending reached zero by
the tuples its upsert left at zero (a TID scan), never by a join the planner could make over the whole
table (0014's DELETE got such plans: in one drain of the sink, 6,516 ms over 85 batches).
What the fold keeps is held equal to the ledger's PENDING book here and by ``test_reconciliation.py``."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from stream.store.journal import write_batch
from stream.store.migrations import migrate
from tests.integration.conftest import explained_write, fresh_database
from tests.integration.test_ledger import rows_of, simulated_entries

# What the ledger holds pending per purchase, offer and currency, from the entries themselves.
_PENDING_BOOK = """
SELECT account_id, coalesce(purchase_ref, transaction_ref) AS purchase_ref, coalesce(offer_id, '') AS offer_id,
    currency, sum(book_movement('PENDING', debit_book, credit_book, amount_minor))::bigint AS pending_minor
FROM ledger_entries GROUP BY 1, 2, 3, 4
HAVING sum(book_movement('PENDING', debit_book, credit_book, amount_minor)) <> 0
ORDER BY 1, 2, 3, 4
"""
_OPEN_PENDING = "SELECT account_id, purchase_ref, offer_id, currency, pending_minor FROM open_pending ORDER BY 1, 2, 3, 4"


@pytest.fixture()
def database(postgres_url: str) -> str:
    return fresh_database(postgres_url)


def test_the_fold_deletes_emptied_purchases_by_tid(database: str) -> None:
    rows = rows_of(simulated_entries(purchases=400, seed=21))
    half = len(rows) // 2

    async def scenario() -> tuple[list[str], int, list[asyncpg.Record], list[asyncpg.Record]]:
        connection = await asyncpg.connect(database)
        try:
            await migrate(connection)
            await write_batch(connection, rows[:half])
            await connection.execute("ANALYZE open_pending")  # the planner knows what the table holds
            keys = "SELECT account_id, purchase_ref, offer_id, currency FROM open_pending"
            open_before = {tuple(r) for r in await connection.fetch(keys)}
            deletes = [n for n in await explained_write(connection, rows[half:]) if "DELETE FROM open_pending" in n]
            emptied = len(open_before - {tuple(r) for r in await connection.fetch(keys)})
            return deletes, emptied, await connection.fetch(_PENDING_BOOK), await connection.fetch(_OPEN_PENDING)
        finally:
            await connection.close()

    deletes, emptied, book, open_pending = asyncio.run(scenario())
    assert emptied > 0, "the second batch must bring purchases of the first to zero"
    assert len(deletes) == 1, [n[:200] for n in deletes]
    assert "Tid Scan on open_pending" in deletes[0], deletes[0]
    assert "Seq Scan on open_pending" not in deletes[0]
    assert [tuple(r) for r in open_pending] == [tuple(r) for r in book]
    assert all(r["pending_minor"] > 0 for r in open_pending)
