"""The chaos run's own Kafka clients: publishing its log, and telling when the pipeline has drained.

The account messages go first, each to its account's partition; the card events follow in order,
paced, in chunks whose deliveries are awaited together, each send that fails (the broker
restarting) sent again, and only as far as the run's fault schedule allows. The pipeline has
drained when the committed offsets of the workers' group (and, with the sink, of the sink's
group) reach the end of every partition of their input topics. Kept apart from the run's
orchestration (``stream.localstack.chaos``), which says when each happens.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from stream.localstack.chaos_log import Message
from stream.localstack.chaos_oracle import partitions
from stream.settings import Settings
from topics.catalogue import Catalogue


async def _producer(settings: Settings) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        max_request_size=1_100_000,
        request_timeout_ms=120_000,
        linger_ms=5,
    )
    await producer.start()
    return producer


async def publish_accounts(settings: Settings, topics: Catalogue, messages: list[Message]) -> None:
    """Publish the account messages (profiles and activations), each to its given partition."""
    names = {"profiles": topics.profiles.name, "activations": topics.activations.name}
    producer = await _producer(settings)
    try:
        for role, key, value, partition in messages:
            await producer.send(names[role], value, key=key, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def publish_cards(
    settings: Settings,
    topics: Catalogue,
    card_messages: list[Message],
    published: list[int],
    gate: threading.Condition,
    allowed: Callable[[int], bool],
    rate: float,
    say: Callable[..., Any],
) -> None:
    """Publish the card events in order, paced, in chunks whose deliveries are awaited together;
    a send that fails (the broker restarting) is sent again."""
    names = {"authorizations": topics.authorizations.name, "settlements": topics.settlements.name}
    producer = await _producer(settings)
    started, n, total = time.monotonic(), 0, len(card_messages)
    try:
        while n < total:
            while not allowed(n):
                await asyncio.sleep(0.05)
            chunk: list[Message] = []
            while n + len(chunk) < total and len(chunk) < 200 and allowed(n + len(chunk)):
                chunk.append(card_messages[n + len(chunk)])
            sends = [await producer.send(names[role], value, key=key) for role, key, value, _ in chunk]
            for (role, key, value, _), delivery in zip(chunk, sends, strict=True):
                while True:
                    try:
                        await delivery
                        break
                    except Exception as error:  # noqa: BLE001 - the broker restarts: send it again
                        say(f"publish retry ({type(error).__name__})", flush=True)
                        await asyncio.sleep(1)
                        delivery = await producer.send(names[role], value, key=key)
            n += len(chunk)
            with gate:
                published[0] = n
                gate.notify_all()
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0.01:
                await asyncio.sleep(ahead)
    finally:
        await producer.stop()


async def drained(settings: Settings, topics: Catalogue, input_topics: list[str], with_sink: bool) -> bool:
    """Whether the workers' group (and, ``with_sink``, the sink's group) has committed up to the
    end of every partition of its topics; False while the broker cannot say (it may be restarting)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        await admin.start()
        await consumer.start()
        checks = [(settings.app_id, input_topics)]
        if with_sink:
            checks.append((settings.sink_group_id, [topics.accruals.name]))
        for group, group_topics in checks:
            committed = await admin.list_consumer_group_offsets(group)
            tps = [tp for t in group_topics for tp in await partitions(settings.kafka_bootstrap_servers, t)]
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                done = committed.get(tp)
                if ends[tp] > 0 and (done is None or done.offset < ends[tp]):
                    return False
        return True
    except Exception:  # noqa: BLE001 - the broker may be restarting
        return False
    finally:
        await consumer.stop()
        await admin.close()
