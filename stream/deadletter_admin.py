"""Reading the dead-letter topic: what failed, where, and why (never the payload's content)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import Codec
from stream.settings import Settings


async def read_dead_letters(settings: Settings, codec: Codec, topic: str, limit: int) -> list[dict]:
    """The last ``limit`` dead letters, oldest first."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None, enable_auto_commit=False,
        **settings.kafka_client_options(),
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(0, end[tp] - limit))
        letters: list[dict] = []
        while any(await consumer.position(tp) < end[tp] for tp in partitions):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                letters.extend(codec.decode(r.value, "dead_letter")[1] for r in records)
        letters.sort(key=lambda letter: letter["failed_at"])
        return letters[-limit:]
    finally:
        await consumer.stop()


async def show_dead_letters(settings: Settings, codec: Codec, topic: str, limit: int) -> None:
    letters = await read_dead_letters(settings, codec, topic, limit)
    for letter in letters:
        size = len(letter["value"]) if letter["value"] is not None else 0
        print(
            f"{letter['failed_at']:%Y-%m-%d %H:%M:%S} {letter['stage']:<7} {letter['reason']:<22} "
            f"{letter['source_topic']}[{letter['source_partition']}]@{letter['source_offset']} "
            f"({size} bytes) {letter['detail']}"
        )
    print(f"{len(letters)} dead letters shown")
