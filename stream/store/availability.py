"""Postgres being away: which errors mean "not reachable now", and the one way every caller waits
for it to answer again (never skipping the work: an outage blocks, it loses nothing). A process
asked to stop meanwhile stops waiting (``StopRequested``): the work is left undone, its input's
offsets not committed, for the next owner to do."""

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
    # Postgres up but short of a resource (class 53: its disk full, out of memory, too many
    # connections) or failing at its own I/O (class 58): it cannot do the work now, and may once an
    # operator made room. Until they were listed here, the sink's writes and the budget grants raised
    # them at once instead of waiting, as refusals.
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.PostgresSystemError,
    # A connection left mid-operation by an outage ("cannot switch to state ..., another operation
    # is in progress"): seen in the chaos run's Postgres outage; drop it and connect again.
    asyncpg.exceptions.InternalClientError,
)

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0
CLOSE_TIMEOUT_S = 5.0  # a kept connection's goodbye; past it, the connection is aborted


class StopRequested(Exception):
    """The wait for Postgres given up because the process is stopping: the work it waited to do is
    not done (the caller commits nothing for it)."""


async def until_postgres_answers(
    call: Callable[[], Awaitable[T]],
    what: str,
    on_outage: Callable[[BaseException], Awaitable[None]] | None = None,
    stopping: asyncio.Event | None = None,
) -> T:
    """Run ``call`` until Postgres answers, backing off from 0.1 s to 5 s between attempts.
    ``on_outage`` runs after each failed attempt (drop a broken connection, count a retry). Once
    ``stopping`` is set, a failed attempt is not tried again: ``StopRequested`` (a stop during an
    outage must not wait for its end; an attempt Postgres answers is never cut short)."""
    delay = FIRST_DELAY_S
    while True:
        try:
            return await call()
        except POSTGRES_UNAVAILABLE as error:
            if on_outage is not None:
                await on_outage(error)
            stopped = StopRequested(f"stopped while Postgres was unavailable for {what} ({type(error).__name__})")
            if stopping is not None and stopping.is_set():
                raise stopped from None
            log.warning("Postgres unavailable for %s (%s); retrying in %.1fs", what, type(error).__name__, delay)
            if stopping is None:
                await asyncio.sleep(delay)
            elif await _set_within(stopping, delay):
                raise stopped from None
            delay = min(delay * 2, MAX_DELAY_S)


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` is set within ``seconds`` (waited for, not polled)."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


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
        """Close the connection, within ``CLOSE_TIMEOUT_S``: one an outage left half open is aborted."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close(timeout=CLOSE_TIMEOUT_S)
            except POSTGRES_UNAVAILABLE as error:  # asyncpg aborted it
                log.info("Postgres connection aborted at close: %s", type(error).__name__)
