"""Campaign budgets in Postgres: concurrent grants from several workers never overspend, a
redelivered event never consumes twice, refunds give budget back."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from stream.store.budgets import BudgetStore
from stream.store.migrations import migrate
from tests.integration.conftest import fresh_database

pytestmark = pytest.mark.integration


@pytest.fixture()
def database(postgres_url: str) -> str:
    url = fresh_database(postgres_url)

    async def migrated() -> None:
        connection = await asyncpg.connect(url)
        try:
            await migrate(connection)
        finally:
            await connection.close()

    asyncio.run(migrated())
    return url


def test_concurrent_workers_never_overspend(database: str) -> None:
    async def scenario() -> tuple[int, int]:
        workers = [BudgetStore(database), BudgetStore(database)]  # two workers, their own pools
        try:
            for worker in workers:
                await worker.define({"campaign": (1_000, "EUR")})
            # 60 purchases each wanting 30.00... of a 1000 budget, raced from both workers.
            results = await asyncio.gather(*(workers[n % 2].apply(f"evt-{n}", {"campaign": 30}) for n in range(60)))
            return sum(results), await workers[0].used("campaign")
        finally:
            for worker in workers:
                await worker.close()

    granted, used = asyncio.run(scenario())
    assert granted == 33 and used == 990  # 34 grants of 30 would be 1020 > 1000


def test_a_redelivered_event_does_not_consume_twice_and_refunds_give_back(database: str) -> None:
    async def scenario() -> list[int]:
        store = BudgetStore(database)
        try:
            await store.define({"campaign": (100, "EUR")})
            seen = []
            assert await store.apply("purchase", {"campaign": 30})
            assert await store.apply("purchase", {"campaign": 30})  # redelivered: same grant
            seen.append(await store.used("campaign"))
            assert await store.remaining(["campaign"], "purchase") == {"campaign": 100}  # its own grant counts as its own
            assert await store.remaining(["campaign"], "other") == {"campaign": 70}
            assert await store.apply("purchase", {"campaign": 20})  # decided again with less: the difference moves
            seen.append(await store.used("campaign"))
            assert await store.apply("refund", {"campaign": -20})  # the refund gives it back
            seen.append(await store.used("campaign"))
            assert not await store.apply("big", {"campaign": 101})  # never above the budget
            seen.append(await store.used("campaign"))
            await store.define({"campaign": (200, "EUR")})  # the rewards team raises the budget
            assert await store.apply("big", {"campaign": 101})
            seen.append(await store.used("campaign"))
            return seen
        finally:
            await store.close()

    assert asyncio.run(scenario()) == [30, 20, 0, 0, 101]


def test_a_batch_of_grants_is_recorded_all_or_none_each_step_covered(database: str) -> None:
    """grant_budgets (migration 0024): the grants of a call in order, each budget covering every
    step as one-by-one grants would, all of them recorded or none."""

    async def scenario() -> None:
        store = BudgetStore(database)
        try:
            await store.define({"campaign": (1_000, "EUR"), "other": (50, "EUR")})
            assert await store.apply("earlier", {"campaign": 500})
            # 500 + 100 + 500 = 1100 at the second step: refused, though the call's total (900) would fit
            refused = await store.grant([("a", {"campaign": 100}), ("b", {"campaign": 500}), ("c", {"campaign": -200})])
            assert refused == (False, {"campaign": 500})
            assert await store.remaining(["campaign"], "a") == {"campaign": 500}  # nothing of it recorded
            # a give-back first makes room for what follows: 500 - 300 + 700 = 900
            granted = await store.grant([("refund", {"campaign": -300}), ("p", {"campaign": 700})], known=["other"])
            assert granted == (True, {"campaign": 900, "other": 0})
            # the same movements again, one of them with less: only the difference moves
            again = await store.grant([("refund", {"campaign": -300}), ("p", {"campaign": 400})])
            assert again == (True, {"campaign": 600})
            # several budgets in one call: one of them not covered refuses the whole call
            assert not (await store.grant([("q", {"campaign": 10, "other": 51})])).granted
            assert await store.used("campaign") == 600 and await store.used("other") == 0
            with pytest.raises(LookupError, match="no campaign budget"):
                await store.grant([("r", {"undefined": 1})])
        finally:
            await store.close()

    asyncio.run(scenario())


def test_concurrent_batches_never_overspend(database: str) -> None:
    async def scenario() -> tuple[int, int]:
        workers = [BudgetStore(database), BudgetStore(database)]
        try:
            for worker in workers:
                await worker.define({"campaign": (1_000, "EUR"), "second": (1_000, "EUR")})
            # 12 batches of 5 grants of 30.00 (and 10.00 of a second budget), raced from both workers
            batches = [[(f"evt-{b}-{n}", {"campaign": 30, "second": 10}) for n in range(5)] for b in range(12)]
            results = await asyncio.gather(*(workers[b % 2].grant(batch) for b, batch in enumerate(batches)))
            return sum(5 for answer in results if answer.granted), await workers[0].used("campaign")
        finally:
            for worker in workers:
                await worker.close()

    granted, used = asyncio.run(scenario())
    assert granted == 30 and used == 900  # 6 whole batches of 150; a seventh would be 1050 > 1000
