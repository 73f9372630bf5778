"""Starting and stopping aiokafka clients so that neither leaves a connection open.

aiokafka's ``start()`` (consumer, producer and admin client alike) first bootstraps: it opens a
connection, asks for the cluster's metadata, then closes that connection. Cancelled in between (a
process stopping, an API shutting down while its offer mirror starts), the connection is recorded
nowhere, so ``stop()`` cannot close it: the socket stays open until the garbage collector finds it
and aiokafka logs "Unclosed AIOKafkaConnection" at error level (aio-libs/aiokafka#715, open; its
fix closes the connection on an ``Exception`` only, and a cancel is not one).

``start_client`` lets a start that was begun go on for up to ``START_GRACE_S`` before the cancel
goes on, so the caller's ``stop()`` then finds and closes everything. The bootstrap takes
milliseconds on a broker that answers; what can take longer (waiting for a topic's metadata,
joining a group) holds its connections where ``stop()`` finds them, so it is cancelled after that.

A consumer's ``stop()`` while the broker is away can raise ``CancelledError`` though nothing
cancelled its caller: its fetcher cancels its fetch requests at its close and awaits each, and one
backing off after a broker error (its sleep is in an ``except`` clause) ends cancelled, which the
close re-raises (aio-libs/aiokafka#647). The caller's own cleanup after it (its producer's stop,
its Postgres connection's close) was skipped, and the error looked like a cancel of the caller.
``stop_consumer`` tells the two apart (``cut_short_by_a_fetch``) and closes the consumer's
connections instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Protocol

from stream.stopping import within

log = logging.getLogger(__name__)


class Startable(Protocol):
    async def start(self) -> Any: ...


START_GRACE_S = 5.0


async def start_client(client: Startable) -> None:
    """``await client.start()``, except that a cancel first gives the start ``START_GRACE_S`` to end."""
    starting = asyncio.ensure_future(client.start())
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        await asyncio.wait([starting], timeout=START_GRACE_S)
        if not starting.done():
            starting.cancel()
            await asyncio.wait([starting])
        if not starting.cancelled():
            starting.exception()  # retrieved: the cancel is what goes on, not a start's failure
        raise


def cut_short_by_a_fetch() -> bool:
    """Whether the ``CancelledError`` just caught from a consumer's stop is aiokafka's (module doc),
    not a cancel of the running task, which must go on."""
    task = asyncio.current_task()
    return task is not None and not task.cancelling()


async def stop_consumer(consumer: Any) -> None:
    """``await consumer.stop()``; when aiokafka's stop is cut short by a fetch cancelled while the
    broker was away (module doc), the consumer's connections are closed instead and the caller goes
    on with its own cleanup. A cancel of the caller still propagates."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        if not cut_short_by_a_fetch():
            raise
        await close_connections(consumer)


async def close_connections(consumer: Any) -> None:
    """What is left of a consumer whose stop was cut short (module doc): its connections, closed
    within ``stream.stopping``'s bound (private to aiokafka: pinned by tests/unit/test_worker_stop.py)."""
    log.warning("the consumer's stop was cut short by a fetch cancelled while the broker was away; closing its connections")
    await within("the consumer's connections", consumer._client.close())


def closing(consumer: Any, producer: Any, *after: Callable[[], Awaitable[Any]]) -> AsyncExitStack:
    """What a consumer loop closes on its way out (``async with``), each step even when one before
    it raised: the consumer first (``stop_consumer``: its stop may be cut short), then the producer,
    then ``after`` in order (a Postgres connection)."""
    leaving = AsyncExitStack()
    for close in reversed(after):
        leaving.push_async_callback(close)
    leaving.push_async_callback(producer.stop)
    leaving.push_async_callback(stop_consumer, consumer)
    return leaving
