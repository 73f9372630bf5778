"""A worker's stop while the broker is away (a redeploy during a broker outage) ends, instead of
waiting for the broker for ever, in four places of Faust's and aiokafka's stop:

- the app flushes its producer before it stops (Faust's ``App.on_stop``): aiokafka's flush waits
  until every batch it holds is delivered. It is given ``STOP_FLUSH_S``, then cancelled
  (``flush_within``). Only at a stop: the flush Faust makes when partitions are revoked still waits
  for the broker, or a table change could reach the changelog after the next owner's;
- the consumer's last commit (Faust's ``Consumer.on_stop``) flushes the producer again and asks
  the group's coordinator, which aiokafka looks for until it answers: given ``STOP_COMMIT_S``
  (``BoundedLastCommit``);
- the producer's own stop waits for the same batches: given ``STOP_PRODUCER_S``, then its sender
  and its connections are closed (``BoundedStopProducer``);
- the consumer thread's stop: aiokafka's fetcher cancels its fetch requests at its close and
  awaits each; one backing off after a broker error (its sleep is in an ``except`` clause) ends
  cancelled, and the close re-raises that (aiokafka #647). The thread died before telling the app
  it had stopped, and the worker waited for that for ever (``StoppingConsumerThread``).

What the producer could not deliver is lost to this process only: a decision counts as processed
once its entries are delivered (``stream.progress``), so its input offsets are not committed, and
the local store holds only the changes the changelog acknowledged (``stream.changelog_table``);
the next worker decides those events again, and the ledger ignores what was delivered twice.
With the broker up, a flush ends in milliseconds and nothing here changes the stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

from stream.kafka_clients import close_connections, cut_short_by_a_fetch
from stream.stopping import within

log = logging.getLogger(__name__)

STOP_FLUSH_S = 5.0  # the producer's flush at a stop (milliseconds with the broker up)
STOP_COMMIT_S = 5.0  # the consumer's last commit
STOP_PRODUCER_S = 5.0  # then the producer's stop, with nothing left to deliver unless the flush ran out


async def flush_within(flush: Awaitable[Any]) -> None:
    """The app's flush of its producer before it stops, given ``STOP_FLUSH_S``."""
    await within("the producer's flush", flush, STOP_FLUSH_S)


class BoundedLastCommit:
    """Faust's consumer (the class this is mixed into), its last commit given ``STOP_COMMIT_S``. A
    commit cut short leaves the offsets the group held: only what is accounted for is ever
    committed (``stream.guarded_consumer``), so the next worker at most decides again."""

    async def on_stop(self) -> None:
        await within("the consumer's last commit", super().on_stop(), STOP_COMMIT_S)  # type: ignore[misc]


class BoundedStopProducer(faust_aiokafka.Producer):
    """Faust's producer, its stop given ``STOP_PRODUCER_S``: past it, what it still holds is dropped
    (module doc) and its sender and connections are closed."""

    async def on_stop(self) -> None:
        producer = self._producer
        stopping = await within("the producer's stop", super().on_stop(), STOP_PRODUCER_S)
        if producer is not None and stopping.cancelled():
            await within("the producer's connections", _close_undelivered(producer))


async def _close_undelivered(producer: Any) -> None:
    """What aiokafka's ``AIOKafkaProducer.stop`` does once its batches are delivered: its sender
    stopped, its connections closed (private to aiokafka: pinned by tests/unit/test_worker_stop.py)."""
    await producer._sender.close()
    await producer.client.close()


class StoppingConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, whose consumer's stop raising ``CancelledError`` (module doc) no
    longer kills it before it tells the app it has stopped: the consumer's connections are closed
    instead."""

    async def on_thread_stop(self) -> None:
        try:
            await super().on_thread_stop()
        except asyncio.CancelledError:
            if not cut_short_by_a_fetch():
                raise  # this stop itself was cancelled
            if self._consumer is not None:
                await close_connections(self._consumer)
