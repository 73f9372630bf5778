"""The ledger's balances fold (migration 0022) reaches each balance by its key: with a ledger that holds
balances already, the statement trigger's UPDATE probes ``balances_pkey`` and never reads the table
whole (it did, hashing every balance at every batch, however few the batch touched). What it folds is
held equal to ``stream.core.balances`` by ``test_ledger.py``."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from stream.store.journal import write_batch
from stream.store.migrations import migrate
from tests.integration.conftest import explained_write, fresh_database
from tests.integration.test_ledger import rows_of, simulated_entries


@pytest.fixture()
def database(postgres_url: str) -> str:
    return fresh_database(postgres_url)


def test_the_fold_probes_balances_by_key(database: str) -> None:
    rows = rows_of(simulated_entries(purchases=400, seed=21))
    half = len(rows) // 2

    async def scenario() -> tuple[str, int]:
        connection = await asyncpg.connect(database)
        try:
            await migrate(connection)
            await write_batch(connection, rows[:half])
            await connection.execute("ANALYZE balances")  # the planner knows what the table holds
            notices = await explained_write(connection, rows[half:])
            folds = [n for n in notices if "WITH d AS MATERIALIZED" in n and "UPDATE balances AS b" in n]
            assert len(folds) == 1, [n[:200] for n in notices]
            return folds[0], await connection.fetchval("SELECT count(*) FROM balances")
        finally:
            await connection.close()

    plan, balances = asyncio.run(scenario())
    assert balances > 20
    assert "Index Scan using balances_pkey on balances" in plan
    assert "Seq Scan on balances" not in plan
