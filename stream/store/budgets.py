"""Campaign budgets across all workers, kept in Postgres (``stream.granting`` drives them).

The rules engine is pure: it is told how much budget is left (``budget_remaining``) and says what
the event consumes or gives back (``Decision.budget_deltas``). This store turns that into a grant
that holds across partitions and workers. A budget is keyed by its offer (``<offer_id>@<currency>``
for a money budget in another currency), a grant by its movement (the account and event id,
``movement_id``):

1. ``remaining(budgets, movement)``: budget - used, plus what this same movement was granted
   before (a redelivery sees the budget it already holds);
2. the engine decides with that;
3. ``apply(movement, deltas)``: in one transaction, for each budget, move ``used`` by the
   difference from the movement's earlier grant, only if the budget still covers it
   (``used + difference <= budget``), and record the grant. False when another worker got there
   first: ``stream.granting`` reads ``remaining`` again and decides again (pure, so that is free).

The grant is applied before the event's entries are sent and its state is stored, so a stored
state always has its budget behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import asyncpg


def movement_id(account_id: str, event_id: str) -> str:
    """The id of one event's budget movement. Event ids are the account's, so the movement is keyed
    by both (length-prefixed: no account id can make two pairs collide)."""
    return f"{len(account_id)}:{account_id}/{event_id}"


class BudgetStore:
    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._pool: asyncpg.Pool | None = None
        self._known: dict[str, tuple[int, str]] = {}  # offer_id -> (budget, currency) already upserted
        self._lock = asyncio.Lock()

    async def _connection_pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(self._database_url, min_size=1, max_size=4)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def define(self, budgets: Mapping[str, tuple[int, str]]) -> None:
        """Create or resize the budgets of offers (offer_id -> (budget_minor, currency))."""
        changed = {k: v for k, v in budgets.items() if self._known.get(k) != v}
        if not changed:
            return
        pool = await self._connection_pool()
        await pool.executemany(
            "INSERT INTO offer_budgets (offer_id, budget_minor, currency) VALUES ($1, $2, $3)"
            " ON CONFLICT (offer_id) DO UPDATE SET budget_minor = EXCLUDED.budget_minor, updated_at = now()",
            [(offer_id, budget, currency) for offer_id, (budget, currency) in changed.items()],
        )
        self._known.update(changed)

    async def remaining(self, budget_keys: Iterable[str], movement: str) -> dict[str, int]:
        """Budget left per key, counting what ``movement`` was already granted as its own (the
        column ``budget_movements.event_id`` holds movement ids, ``offer_id`` budget keys)."""
        pool = await self._connection_pool()
        rows = await pool.fetch(
            "SELECT b.offer_id, b.budget_minor - b.used_minor + coalesce(m.delta_minor, 0) AS remaining"
            " FROM offer_budgets b LEFT JOIN budget_movements m ON m.offer_id = b.offer_id AND m.event_id = $2"
            " WHERE b.offer_id = ANY($1)",
            list(budget_keys),
            movement,
        )
        return {row["offer_id"]: max(0, row["remaining"]) for row in rows}

    async def apply(self, movement: str, deltas: Mapping[str, int]) -> bool:
        """Record ``movement``'s grants atomically; False (nothing changed) if a budget no longer
        covers them."""
        try:
            return await self._apply(movement, deltas)
        except _NotCovered:
            return False

    async def _apply(self, movement: str, deltas: Mapping[str, int]) -> bool:
        pool = await self._connection_pool()
        async with pool.acquire() as connection, connection.transaction():
            for offer_id, delta in sorted(deltas.items()):  # a fixed order: no deadlock between workers
                before = (
                    await connection.fetchval(
                        "SELECT delta_minor FROM budget_movements WHERE event_id = $1 AND offer_id = $2 FOR UPDATE",
                        movement,
                        offer_id,
                    )
                    or 0
                )
                difference = delta - before
                if difference:
                    granted = await connection.fetchval(
                        "UPDATE offer_budgets SET used_minor = used_minor + $2, updated_at = now()"
                        " WHERE offer_id = $1 AND used_minor + $2 <= budget_minor AND used_minor + $2 >= 0"
                        " RETURNING true",
                        offer_id,
                        difference,
                    )
                    if not granted:
                        if not await connection.fetchval("SELECT true FROM offer_budgets WHERE offer_id = $1", offer_id):
                            raise LookupError(
                                f"no campaign budget {offer_id!r} is defined (a bug: the offers' budget lines miss it)"
                            )
                        raise _NotCovered
                await connection.execute(
                    "INSERT INTO budget_movements (event_id, offer_id, delta_minor) VALUES ($1, $2, $3)"
                    " ON CONFLICT (event_id, offer_id) DO UPDATE SET delta_minor = EXCLUDED.delta_minor",
                    movement,
                    offer_id,
                    delta,
                )
        return True

    async def used(self, offer_id: str) -> int:
        pool = await self._connection_pool()
        return int(await pool.fetchval("SELECT used_minor FROM offer_budgets WHERE offer_id = $1", offer_id) or 0)


class _NotCovered(Exception):
    """Raised inside the transaction to roll it back when a budget no longer covers a grant."""
