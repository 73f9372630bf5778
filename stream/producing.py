"""Kafka producers, made one way: the project's reliability options and the security settings.

``producer`` is for processes that keep one (sink, simulator, API); ``send_once`` for commands
that publish a few messages and stop (offers, accounts); ``AppSends`` for the worker's hot path,
through its Faust app's producer, a record at a time or a batch per topic and partition
(``Batches``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer

from stream.settings import Settings

# (topic, key, value or None for a tombstone, partition or None for the default partitioner)
Message = tuple[str, bytes, bytes | None, int | None]


def producer(settings: Settings, **options: object) -> AIOKafkaProducer:
    """A producer that waits for every in-sync replica and never writes a message twice."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        **options,
        **settings.kafka_client_options(),
    )


async def send_once(settings: Settings, messages: Iterable[Message]) -> None:
    """Publish ``messages`` in order and wait until the broker has them all."""
    client = producer(settings)
    try:
        await client.start()  # stopped below even when it cannot start (an unreachable broker)
        for topic, key, value, partition in messages:
            await client.send(topic, value, key=key, partition=partition)
        await client.flush()
    finally:
        await client.stop()


class AppSends:
    """Records of bytes sent through a Faust app's producer straight to its Kafka client: no
    ``FutureMessage``, no buffer of pending messages, no serializers, no callbacks (that path cost
    the worker about 40 microseconds a record). The producer is the app's, so Faust still flushes
    these sends before it commits input offsets."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_s: float | None = None,
    ) -> Awaitable[Any]:
        """Hand one record to the producer; returns its delivery (the record's metadata). Waits
        only when the producer's buffer is full. ``partition`` None: the key's (murmur2, as Java
        clients partition). ``timestamp_s`` None: the time of the send."""
        producer = self.app.producer
        return await producer.send(topic, key, value, partition, timestamp_s, headers)

    def batches(self, order: Sequence[str] = ()) -> Batches:
        """Records to hand to the producer a batch per topic and partition (``Batches``)."""
        return Batches(self.app.producer._ensure_producer(), order)


class Gathering(Protocol):
    """Records gathered, then handed to the producer together (``Batches``, ``OneByOne``)."""

    async def add(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int, headers: list[tuple[str, bytes]] | None = None
    ) -> Awaitable[Any]: ...

    async def send(self) -> Sequence[Awaitable[Any]]: ...


class Batches:
    """Records gathered into one of the producer's batches per topic and partition, handed to it by
    ``send``: one delivery (a future) per batch instead of one per record, and no per-record trip
    through the producer's ``send`` (about 7 microseconds a record on this machine, against 1.2 for
    appending it to a batch: 60,000 records of 250 bytes to 8 partitions, with their delivery).

    ``add`` returns the delivery of the batch the record joined: done with the metadata of the
    batch's last record (its offset: what a changelog's persisted offset needs), or failed as the
    batch failed; it is done only once the batch was handed over and acknowledged, so a delivery is
    waited for only after ``send``. The batches are handed over in ``order`` of their topics (then
    the others, as first used), each topic's partitions as first used; a batch full (the producer's
    batch size) hands over every open batch at once, in the same order, so whatever was added before
    it is handed over before whatever is added after it. Two batches of one partition are handed over
    one after the other: the producer takes a partition's next batch once it sent the last. A batch
    is closed as it is handed over: the producer sends it at once, where it would keep an open one
    for its linger in case more records came (none would), 5 ms on each of a flush's two waits."""

    def __init__(self, producer: Any, order: Sequence[str] = ()) -> None:
        self.producer = producer
        self.order = {topic: place for place, topic in enumerate(order)}
        self._open: dict[tuple[str, int], _Open] = {}
        self._deliveries: list[asyncio.Future[Any]] = []

    async def add(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int, headers: list[tuple[str, bytes]] | None = None
    ) -> asyncio.Future[Any]:
        """Add one record (``value`` None: a tombstone) to the batch of its topic and partition; returns that
        batch's delivery."""
        batch = self._open.get((topic, partition))
        if batch is None:
            batch = self._open[topic, partition] = _Open(self.producer.create_batch())
        if batch.builder.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
            await self.send()  # full: hand over all open batches, so the order holds across topics
            batch = self._open[topic, partition] = _Open(self.producer.create_batch())
            batch.builder.append(timestamp=None, key=key, value=value, headers=headers or [])  # a first always fits
        batch.count += 1
        return batch.delivery

    async def send(self) -> list[asyncio.Future[Any]]:
        """Hand every open batch to the producer (in the order the class doc says); returns the deliveries of
        every batch handed over since this was made."""
        opened, self._open = self._open, {}
        unordered = len(self.order)
        for (topic, partition), batch in sorted(opened.items(), key=lambda item: self.order.get(item[0][0], unordered)):
            batch.builder.close()  # complete: sent at once, not kept for the producer's linger
            handed = await self.producer.send_batch(batch.builder, topic, partition=partition)
            handed.add_done_callback(batch.settle)
            self._deliveries.append(batch.delivery)
        return list(self._deliveries)


class _Open:
    """A batch being filled: the producer's builder, its delivery, how many records it holds."""

    __slots__ = ("builder", "count", "delivery")

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self.delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.count = 0

    def settle(self, handed: asyncio.Future[Any]) -> None:
        """The delivery from the producer's answer: the metadata of the batch's last record, or its failure."""
        delivery = self.delivery
        if delivery.done():
            return
        if handed.cancelled():
            delivery.cancel()
        elif (error := handed.exception()) is not None:
            delivery.set_exception(error)
        else:
            metadata = handed.result()  # the batch's first record's offset
            delivery.set_result(None if metadata is None else metadata._replace(offset=metadata.offset + self.count - 1))


class OneByOne:
    """``Batches``' interface over any ``send``: each record sent at once, its own delivery (what a stand-in for
    the producer records)."""

    def __init__(self, sends: Any) -> None:
        self.sends = sends
        self._deliveries: list[Awaitable[Any]] = []

    async def add(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int, headers: list[tuple[str, bytes]] | None = None
    ) -> Awaitable[Any]:
        delivery = await self.sends.send(topic, key, value, partition, headers)
        self._deliveries.append(delivery)
        return delivery

    async def send(self) -> list[Awaitable[Any]]:
        return list(self._deliveries)
