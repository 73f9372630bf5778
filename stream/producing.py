"""Kafka producers, made one way: the project's reliability options and the security settings.

``producer`` is for processes that keep one (sink, simulator, API); ``send_once`` for commands
that publish a few messages and stop (offers, accounts).
"""

from __future__ import annotations

from collections.abc import Iterable

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
