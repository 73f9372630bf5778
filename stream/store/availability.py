"""Postgres being away: which errors mean "not reachable now", and the one way every caller waits
for it to answer again (never skipping the work: an outage blocks, it loses nothing)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "Postgres is not reachable now": whoever meets one waits and tries again
# (never skips); anything else from Postgres is a refusal.
POSTGRES_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    # A connection left mid-operation by an outage ("cannot switch to state ..., another operation
    # is in progress"): seen in the chaos run's Postgres outage; drop it and connect again.
    asyncpg.exceptions.InternalClientError,
)

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0


async def until_postgres_answers(
    call: Callable[[], Awaitable[T]], what: str, on_outage: Callable[[BaseException], Awaitable[None]] | None = None
) -> T:
    """Run ``call`` until Postgres answers, backing off from 0.1 s to 5 s between attempts.
    ``on_outage`` runs after each failed attempt (drop a broken connection, count a retry)."""
    delay = FIRST_DELAY_S
    while True:
        try:
            return await call()
        except POSTGRES_UNAVAILABLE as error:
            log.warning("Postgres unavailable for %s (%s); retrying in %.1fs", what, type(error).__name__, delay)
            if on_outage is not None:
                await on_outage(error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)


class KeptConnection:
    """The one Postgres connection a long-running consumer (the sink, the payout answers) keeps across batches:
    made on first use, and again after an outage dropped it (``until_postgres_answers``'s ``on_outage``)."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._connection: asyncpg.Connection | None = None

    async def get(self) -> asyncpg.Connection:
        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(self._url, timeout=10)
        return self._connection

    def drop(self) -> None:
        """Forget a connection an outage may have left broken, without waiting on it."""
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
