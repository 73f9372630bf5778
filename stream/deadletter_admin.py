"""Reading the dead-letter topic: what failed, where, and why (never the payload's content)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import UnknownTopicOrPartitionError, for_code

from schemas.codec import Codec, DecodeError
from stream.core.card_numbers import mask_card_numbers
from stream.kafka_clients import stop_consumer
from stream.settings import Settings


class NoDeadLetterTopic(LookupError):
    """The broker has no such dead-letter topic (a wrong TOPIC_PREFIX, or nothing ever ran there)."""


async def _partitions(settings: Settings, topic: str) -> list[int]:
    """The topic's partition ids, asked of the broker (a consumer's metadata cache may not hold
    a topic it was not subscribed to); NoDeadLetterTopic when there is no such topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, **settings.kafka_client_options())
    try:
        await admin.start()
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    code = description.get("error_code", 0)
    if code == UnknownTopicOrPartitionError.errno:
        raise NoDeadLetterTopic(topic)
    if code:
        raise for_code(code)(f"cannot describe topic {topic}")
    return sorted(p["partition"] for p in description["partitions"])


async def read_dead_letters(
    settings: Settings, codec: Codec, topic: str, limit: int, stall_timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """The newest ``limit`` dead letters, oldest first. A record that is not a dead letter is
    listed with the reason ``unreadable`` (and the decoding problem as its detail)."""
    partitions = [TopicPartition(topic, p) for p in await _partitions(settings, topic)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **settings.kafka_client_options(),
    )
    try:
        await consumer.start()
        consumer.assign(partitions)
        begin = await consumer.beginning_offsets(partitions)
        end = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(begin[tp], end[tp] - limit))
        letters: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + stall_timeout_s
        while True:
            # Not ``any(await ... for ...)``: an ``await`` makes that an async generator, which
            # ``any`` cannot iterate (every call crashed on it).
            behind = [tp for tp in partitions if await consumer.position(tp) < end[tp]]
            if not behind:
                break
            batches = await consumer.getmany(*behind, timeout_ms=1000)
            if any(batches.values()):
                deadline = loop.time() + stall_timeout_s
            elif loop.time() > deadline:
                raise TimeoutError(f"reading {topic} made no progress for {stall_timeout_s:.0f}s")
            for records in batches.values():
                letters.extend(_letter(codec, record) for record in records if record.offset < end[_tp(record)])
        letters.sort(key=lambda letter: (letter["failed_at"] is None, letter["failed_at"] or 0))
        return letters[-limit:]
    finally:
        await stop_consumer(consumer)


def _tp(record: Any) -> TopicPartition:
    return TopicPartition(record.topic, record.partition)


def _letter(codec: Codec, record: Any) -> dict[str, Any]:
    try:
        return codec.decode(record.value, "dead_letter")[1]
    except DecodeError as error:
        return {
            "failed_at": None,
            "stage": "?",
            "reason": "unreadable",
            "source_topic": record.topic,
            "source_partition": record.partition,
            "source_offset": record.offset,
            "value": None,
            "detail": f"this record of the dead-letter topic is not a dead letter: {error}",
        }


def format_letter(letter: dict[str, Any]) -> str:
    """One line: when, stage, reason, where it came from, the original's size, the detail (any card
    number in it masked, also in a dead letter written before masking) and the card numbers masked
    in the original (the first 12 hex digits of each one's keyed hash, to tell the same card). The
    original bytes themselves are never shown."""
    size = len(letter["value"]) if letter.get("value") is not None else 0
    when = f"{letter['failed_at']:%Y-%m-%d %H:%M:%S}" if letter.get("failed_at") is not None else "?" * 19
    hashes = letter.get("card_number_hashes") or []
    cards = f" [card numbers masked: {', '.join(digest[:12] for digest in hashes)}]" if hashes else ""
    return (
        f"{when} {letter['stage']:<7} {letter['reason']:<22} "
        f"{letter['source_topic']}[{letter['source_partition']}]@{letter['source_offset']} "
        f"({size} bytes) {mask_card_numbers(str(letter['detail']), glued=True).text}{cards}"
    )


async def show_dead_letters(settings: Settings, codec: Codec, topic: str, limit: int) -> None:
    letters = await read_dead_letters(settings, codec, topic, limit)
    for letter in letters:
        print(format_letter(letter))
    print(f"{len(letters)} dead letters shown (the newest {limit} at most) from {topic}")
