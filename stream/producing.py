"""Kafka producers, made one way: the project's reliability options and the security settings.

``producer`` is for processes that keep one (sink, simulator, API); ``send_once`` for commands
that publish a few messages and stop (offers, accounts); ``AppSends`` for the worker's hot path,
through its Faust app's producer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import Any

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
    ) -> Awaitable[Any]:
        """Hand one record to the producer; returns its delivery (the record's metadata). Waits
        only when the producer's buffer is full. ``partition`` None: the key's (murmur2, as Java
        clients partition)."""
        producer = self.app.producer
        return await producer.send(topic, key, value, partition, None, headers)
