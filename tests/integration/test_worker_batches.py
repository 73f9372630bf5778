"""The worker's records handed to the producer a batch per topic and partition (``stream.producing.Batches``),
against the real broker: every record arrives as added and in order, a batch's delivery carries its last
record's offset (what the changelog's persisted offset needs) and is done only once handed over, and a full
batch hands over every open one, in the order of their topics."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.producing import Batches

pytestmark = pytest.mark.asyncio


async def topics(bootstrap: str, *names: str, partitions: int = 2) -> list[str]:
    made = [f"{name}-{uuid.uuid4().hex[:8]}" for name in names]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in made])
    finally:
        await admin.close()
    return made


async def read_back(bootstrap: str, topic: str, partition: int, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records: list[Any] = []
        while len(records) < count:
            fetched = await asyncio.wait_for(consumer.getmany(tp, timeout_ms=1000), 30)
            records.extend(fetched.get(tp, []))
        return records
    finally:
        await consumer.stop()


async def test_records_arrive_as_added_a_delivery_per_batch_with_its_last_offset(kafka_bootstrap: str) -> None:
    accruals, notes = await topics(kafka_bootstrap, "batches-accruals", "batches-notes")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        batches = Batches(producer, (accruals, notes))
        added: dict[tuple[str, int], list[tuple[bytes, bytes | None]]] = {}
        deliveries = []
        for n in range(30):
            topic, partition = (accruals, notes)[n % 2], n % 3 % 2
            key, value = f"acct-{n}".encode(), (None if n == 7 else f"value-{n}".encode())  # 7: a tombstone
            deliveries.append(await batches.add(topic, key, value, partition, [("source", b"x")]))
            added.setdefault((topic, partition), []).append((key, value))
        assert len(set(map(id, deliveries))) == 4  # one per topic and partition
        assert not any(d.done() for d in deliveries)  # nothing handed over yet
        handed = await batches.send()
        assert len(handed) == 4
        results = await asyncio.gather(*handed)
        for (topic, partition), records in added.items():
            read = await read_back(kafka_bootstrap, topic, partition, len(records))
            assert [(r.key, r.value) for r in read] == records
            assert all(r.headers == (("source", b"x"),) for r in read)
            metadata = next(m for m in results if m.topic == topic and m.partition == partition)
            assert metadata.offset == read[-1].offset  # the batch's last record
    finally:
        await producer.stop()


async def test_a_full_batch_hands_over_every_open_one_in_the_order_of_their_topics(kafka_bootstrap: str) -> None:
    """Whatever was added before a batch filled is handed over before whatever is added after it, across topics:
    a payout instruction never leaves before the entries that moved its cash."""
    accruals, payouts = await topics(kafka_bootstrap, "batches-accruals", "batches-payouts", partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True, max_batch_size=4096)
    await producer.start()
    handed_over: list[tuple[str, int]] = []
    send_batch = producer.send_batch

    async def recorded(batch: Any, topic: str, *, partition: int) -> Any:
        handed_over.append((topic, batch.record_count()))
        return await send_batch(batch, topic, partition=partition)

    producer.send_batch = recorded  # type: ignore[method-assign]
    try:
        batches = Batches(producer, (accruals, payouts))
        value = b"v" * 500
        for n in range(20):  # a payout after each entry: 20 entries fill a 4 KiB batch about twice
            await batches.add(accruals, b"acct", value + bytes([n]), 0)
            await batches.add(payouts, b"acct", value + bytes([n]), 0)
        await asyncio.gather(*await batches.send())
        assert len(handed_over) > 2  # batches filled on the way
        assert all(count for _, count in handed_over)
        # Each hand-over of the accruals comes before the payouts' of the same round: no payout overtakes its entry.
        entries_so_far = payouts_so_far = 0
        for topic, count in handed_over:
            if topic == accruals:
                entries_so_far += count
            else:
                payouts_so_far += count
                assert payouts_so_far <= entries_so_far
        for topic in (accruals, payouts):
            read = await read_back(kafka_bootstrap, topic, 0, 20)
            assert [r.value[-1] for r in read] == list(range(20))
    finally:
        await producer.stop()


async def test_a_batch_handed_over_is_sent_at_once_whatever_the_producer_linger(kafka_bootstrap: str) -> None:
    """A batch handed over is complete: aiokafka sends a closed batch as soon as it can, where it keeps an
    open one for its linger, in case more records come (which none would). A flush waits for its
    changelog batches, and its next one for its entries: 5 ms of linger each, on every flush, was most of
    what the worker spent waiting on the broker."""
    (topic,) = await topics(kafka_bootstrap, "batches-linger", partitions=1)
    linger_s = 2.0
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=int(linger_s * 1000))
    await producer.start()
    try:
        for _ in range(2):  # the first also fetches the topic's metadata
            batches = Batches(producer, (topic,))
            await batches.add(topic, b"acct", b"value", 0)
            started = asyncio.get_running_loop().time()
            await asyncio.gather(*await batches.send())
        assert asyncio.get_running_loop().time() - started < linger_s / 4
        lingering = producer.create_batch()  # the same batch left open: the producer waits for its linger
        lingering.append(timestamp=None, key=b"acct", value=b"value", headers=[])
        started = asyncio.get_running_loop().time()
        await (await producer.send_batch(lingering, topic, partition=0))
        assert asyncio.get_running_loop().time() - started >= linger_s * 0.9
    finally:
        await producer.stop()
