"""Campaign budgets across all workers, kept in Postgres (``stream.granting`` drives them).

The rules engine is pure: it is told how much budget is left (``budget_remaining``) and says what
the event consumes or gives back (``Decision.budget_deltas``). This store turns that into a grant
that holds across partitions and workers. A budget is keyed by its offer (``<offer_id>@<currency>``
for a money budget in another currency), a grant by its movement (the account and event id,
``movement_id``):

1. ``remaining(budgets, movement)``: budget - used, plus what this same movement was granted
   before (a redelivery sees the budget it already holds);
2. the engine decides with that;
3. ``grant(grants)``: in one call to ``grant_budgets`` (migration 0024), one round trip, for each
   grant in order, move ``used`` by the difference from the movement's earlier grant, only if the
   budget covers every step (``0 <= used + difference <= budget``), and record the grant; all of
   the call's grants or none. A worker grants a whole batch's decisions so (``stream.granting``),
   or one decision (``apply``). Refused when another worker got there first: the caller reads what
   is left again and decides again (pure, so that is free).

The grant is applied before the event's entries are sent and its state is stored, so a stored
state always has its budget behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import asyncpg


def movement_id(account_id: str, event_id: str) -> str:
    """The id of one event's budget movement. Event ids are the account's, so the movement is keyed
    by both (length-prefixed: no account id can make two pairs collide)."""
    return f"{len(account_id)}:{account_id}/{event_id}"


class Granted(NamedTuple):
    """A call's answer: whether its grants were recorded, and what each budget it named has used now."""

    granted: bool
    used: dict[str, int]


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
        return (await self.grant([(movement, deltas)])).granted

    async def grant(self, grants: Sequence[tuple[str, Mapping[str, int]]], known: Iterable[str] = ()) -> Granted:
        """Record every one of ``grants`` (movement, budget key -> its grant in all), in order, or
        none of them if a budget does not cover a step; in one round trip. ``known``: more budgets
        whose use to return."""
        movements: list[str] = []
        keys: list[str] = []
        deltas: list[int] = []
        for movement, moved in grants:
            for key, delta in moved.items():
                movements.append(movement)
                keys.append(key)
                deltas.append(delta)
        pool = await self._connection_pool()
        try:
            rows = await pool.fetch(
                "SELECT budget, used, granted FROM grant_budgets($1, $2, $3, $4)", movements, keys, deltas, list(known)
            )
        except asyncpg.NoDataFoundError as error:
            raise LookupError(f"{error} (a bug: the offers' budget lines miss it)") from error
        return Granted(all(row["granted"] for row in rows), {row["budget"]: row["used"] for row in rows})

    async def used_of(self, budget_keys: Iterable[str]) -> dict[str, int]:
        """What each budget has used (a budget not defined yet: none)."""
        pool = await self._connection_pool()
        rows = await pool.fetch("SELECT offer_id, used_minor FROM offer_budgets WHERE offer_id = ANY($1)", list(budget_keys))
        return {row["offer_id"]: row["used_minor"] for row in rows}

    async def used(self, offer_id: str) -> int:
        pool = await self._connection_pool()
        return int(await pool.fetchval("SELECT used_minor FROM offer_budgets WHERE offer_id = $1", offer_id) or 0)
