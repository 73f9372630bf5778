"""What the matcher's partition watch reads of the consumer (stream.guarded_consumer.on_its_way),
pinned against aiokafka and a real broker: a partition's position is the next offset the consumer
hands on, not the next one it fetches. A position past what the agent processed therefore means
records were handed on (to Faust's queue, or lost on the way), never that they were only fetched."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.integration.conftest import one_partition_topic

pytestmark = pytest.mark.integration


@pytest.mark.asyncio
async def test_a_partition_s_position_is_the_next_offset_handed_on_not_the_next_fetched(kafka_bootstrap: str) -> None:
    topic = await one_partition_topic(kafka_bootstrap, "position")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(100):
            await producer.send(topic, f"record {i}".encode(), partition=0)
        await producer.flush()
    finally:
        await producer.stop()

    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        handed: list[int] = []
        while not handed:
            batch = await consumer.getmany(tp, timeout_ms=5000, max_records=10)
            handed = [record.offset for record in batch.get(tp, [])]
        assert handed == list(range(10))
        assert await consumer.position(tp) == 10  # one fetch brought all 100; 10 were handed on
        assert consumer.highwater(tp) == 100
    finally:
        await consumer.stop()
