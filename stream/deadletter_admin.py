"""Reading the dead-letter topic: what failed, where, and why (never the payload's content); and
replaying dead letters once their cause is fixed.

A replay publishes a dead letter's original key and bytes again on the topic it came from (keyed
as before, so on its account's partition), with a header naming the dead letter it came from
(``REPLAYED_FROM_HEADER``), for the pipeline to process as a new message. That is safe to repeat:
an event is decided once by its event id (a replayed event already decided is a duplicate and
changes nothing), and the ledger keeps an entry once by its id; a replay whose cause is not fixed
is dead-lettered again. What cannot be replayed is left, and said: a dead letter whose original had
card numbers masked (its bytes are no longer the processor's message; the processor sends it again
without them), one too large to have kept its bytes, one that is not a dead letter, and one from a
topic a replay does not publish on (``replayable_topics``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import UnknownTopicOrPartitionError, for_code

from schemas.codec import Codec, DecodeError, DecodeFailure
from stream.account_profiles import ACCOUNT_ERASED
from stream.core.card_numbers import mask_card_numbers
from stream.core.events import RejectReason
from stream.deadletter import OtherReason
from stream.kafka_clients import stop_consumer
from stream.producing import producer
from stream.settings import Settings
from topics.catalogue import Catalogue

REPLAYED_FROM_HEADER = "cashback-replayed-from"  # <dead-letter topic>[<partition>]@<offset>
# Every reason a dead letter is written with (what ``--reason`` accepts).
REASONS = frozenset(r.value for r in (*DecodeFailure, *RejectReason, *OtherReason)) | {ACCOUNT_ERASED}


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
    settings: Settings, codec: Codec, topic: str, limit: int | None, stall_timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """The newest ``limit`` dead letters (None: every one), oldest first, each with where it sits
    (``dead_letter_at``: partition and offset). A record that is not a dead letter is listed with
    the reason ``unreadable`` (and the decoding problem as its detail)."""
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
            consumer.seek(tp, begin[tp] if limit is None else max(begin[tp], end[tp] - limit))
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
        return letters if limit is None else letters[-limit:]
    finally:
        await stop_consumer(consumer)


def _tp(record: Any) -> TopicPartition:
    return TopicPartition(record.topic, record.partition)


def _letter(codec: Codec, record: Any) -> dict[str, Any]:
    try:
        return {**codec.decode(record.value, "dead_letter")[1], "dead_letter_at": (record.partition, record.offset)}
    except DecodeError as error:
        return {
            "dead_letter_at": (record.partition, record.offset),
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


@dataclass
class Replay:
    """What a replay found: the dead letters it published again (or would, in a dry run), and
    those of the reasons asked for that it left, counted by why."""

    replayed: list[dict[str, Any]] = field(default_factory=list)
    left: Counter[str] = field(default_factory=Counter)


def replayable_topics(catalogue: Catalogue) -> frozenset[str]:
    """The topics a dead letter may be replayed on: what the matcher reads, the accruals the sink writes and
    the charities' remittance answers read beside it (the other answers are among the matcher's inputs)."""
    return frozenset(
        t.name for t in (*catalogue.inputs(), *catalogue.account_inputs(), catalogue.accruals, catalogue.donation_payout_results)
    )


def why_not_replayable(letter: dict[str, Any], topics: frozenset[str]) -> str | None:
    """Why a dead letter cannot be published again as it came (None: it can)."""
    if letter["reason"] == "unreadable":
        return "not a dead letter"
    if letter["reason"] == OtherReason.TOO_LARGE.value or letter.get("value") is None:
        return "too large: its bytes were not kept"
    if letter.get("card_number_hashes"):
        return "card numbers were masked in it: the processor must send it again without them"
    if letter["source_topic"] not in topics:
        return f"from {letter['source_topic']}, a topic a replay does not publish on"
    return None


def choose(letters: Iterable[dict[str, Any]], reasons: frozenset[str], since: datetime | None, topics: frozenset[str]) -> Replay:
    """The dead letters of ``reasons`` written at or after ``since`` that can be replayed, and the others of those reasons left."""
    replay = Replay()
    for letter in letters:
        if letter["reason"] not in reasons or (
            since is not None and (letter["failed_at"] is None or letter["failed_at"] < since)
        ):
            continue
        why = why_not_replayable(letter, topics)
        if why is None:
            replay.replayed.append(letter)
        else:
            replay.left[why] += 1
    return replay


async def replay_dead_letters(
    settings: Settings,
    codec: Codec,
    catalogue: Catalogue,
    reasons: frozenset[str],
    since: datetime | None = None,
    dry_run: bool = False,
) -> Replay:
    """Publish again every replayable dead letter of ``reasons`` (written at or after ``since``) on its
    source topic, oldest first, and wait until the broker has them all; ``dry_run``: only say which."""
    topic = catalogue.dead_letters.name
    replay = choose(await read_dead_letters(settings, codec, topic, None), reasons, since, replayable_topics(catalogue))
    if dry_run or not replay.replayed:
        return replay
    client = producer(settings)
    try:
        await client.start()
        for letter in replay.replayed:
            partition, offset = letter["dead_letter_at"]
            header = (REPLAYED_FROM_HEADER, f"{topic}[{partition}]@{offset}".encode())
            await client.send(letter["source_topic"], letter["value"], key=letter["key"], headers=[header])
        await client.flush()
    finally:
        await client.stop()
    return replay


def format_replay(replay: Replay, dry_run: bool) -> str:
    """What a replay did, a line per dead letter (as ``format_letter``) and a last line of counts."""
    lines = [("would replay " if dry_run else "replayed ") + format_letter(letter) for letter in replay.replayed]
    left = "; ".join(f"{count} {why}" for why, count in sorted(replay.left.items()))
    verb = "would be replayed" if dry_run else "replayed"
    lines.append(f"{len(replay.replayed)} dead letters {verb}" + (f"; left: {left}" if left else ""))
    return "\n".join(lines)
