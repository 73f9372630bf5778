"""Starting aiokafka clients so that a cancel never leaves a connection open.

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
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol


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
