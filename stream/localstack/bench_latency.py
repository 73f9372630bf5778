"""Latency at a paced rate: from an event's broker timestamp to its effect being readable in Postgres.

- **The start** is the input message's timestamp as the broker stored it: the bench's card-event
  topics use ``LogAppendTime``, so it is the broker's clock when it appended the message. It is
  read back from the topic after the run, not taken from the publisher.
- **The end** is when the sink's transaction that wrote the event's first row committed:
  Postgres records every transaction's commit time (``track_commit_timestamp``, which the bench
  turns on), and ``pg_xact_commit_timestamp(xmin)`` of a row is the moment it, and the balances
  written in the same transaction, became readable. An event's rows are its ledger entries or its
  ``purchases_not_earned`` line (a purchase that earned nothing has no balance to move but its
  history line is its effect). Broker and Postgres run on this machine: one clock.
- **Which events**: each event id of an account once, at its first message (a re-sent event or a
  conflicting duplicate changes nothing, or re-emits rows written earlier). Events with no row of
  their own (a reversal of a purchase that earned nothing, ...) have no end and are counted apart.

The events are published paced: every ``TICK_S`` the publisher sends what the rate owes by then,
so the stream is even at that scale, not bursts of a chunk.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.codec import Codec
from stream.localstack.chaos_log import Message
from stream.settings import Settings
from topics.catalogue import Catalogue

TICK_S = 0.005

_READABLE = """
SELECT account_id, source_event_id, min(extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000)::float8 AS at_ms
FROM {table} WHERE {position} > $1 GROUP BY account_id, source_event_id
"""

EventKey = tuple[str, str]  # account id, event id


@dataclass(frozen=True)
class Latency:
    events: int  # events measured
    without_row: int  # events published that wrote no row of their own
    p50_ms: float
    p99_ms: float
    max_ms: float
    published_per_s: float  # the rate the publisher achieved
    worker_p50_ms: float  # of the part from the event's broker timestamp to its first accrual leaving the worker
    worker_p99_ms: float
    # per second of publication: the p99 of the events published in it (whether the delay comes in
    # bursts or grows while the worker falls behind)
    p99_by_second_ms: list[float]


async def enable_commit_timestamps(database_url: str) -> None:
    """Ask Postgres to record commit times (takes effect at its next start)."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("ALTER SYSTEM SET track_commit_timestamp = on")
    finally:
        await connection.close()


async def table_marks(database_url: str) -> tuple[int, int]:
    """Where the ledger and the not-earned lines end now: rows above these are the run's."""
    connection = await asyncpg.connect(database_url)
    try:
        if await connection.fetchval("SHOW track_commit_timestamp") != "on":
            raise RuntimeError("Postgres does not record commit timestamps (track_commit_timestamp)")
        ledger = await connection.fetchval("SELECT coalesce(max(entry_seq), 0) FROM ledger_entries")
        not_earned = await connection.fetchval("SELECT coalesce(max(history_seq), 0) FROM purchases_not_earned")
        return int(ledger), int(not_earned)
    finally:
        await connection.close()


async def publish_paced(settings: Settings, catalogue: Catalogue, messages: Sequence[Message], rate: float) -> float:
    """Publish ``messages`` in order at ``rate`` a second; return the rate achieved."""
    names = {"authorizations": catalogue.authorizations.name, "settlements": catalogue.settlements.name}
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=0)
    await producer.start()
    try:
        sends = []
        started = time.monotonic()
        sent = 0
        while sent < len(messages):
            owed = min(len(messages), math.floor((time.monotonic() - started) * rate) + 1)
            for role, key, value, _ in messages[sent:owed]:
                sends.append(await producer.send(names[role], value, key=key))
            sent = max(sent, owed)
            await asyncio.sleep(TICK_S)
        await asyncio.gather(*sends)
        return len(messages) / (time.monotonic() - started)
    finally:
        await producer.stop()


async def broker_times(settings: Settings, codec: Codec, since: dict[TopicPartition, int]) -> dict[EventKey, int]:
    """Each event's first message timestamp (ms) among the messages from ``since`` to the topics'
    end: on the card-event topics, the broker's (``LogAppendTime``); on the accruals topic, the
    worker's producer's when it handed the record over (``CreateTime``): when its entry left."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = list(since)
        consumer.assign(tps)
        for tp, offset in since.items():
            consumer.seek(tp, offset)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > since[tp]}
        found: dict[EventKey, int] = {}
        while remaining:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for record in records:
                    _, event = codec.decode(record.value)
                    key = (event["account_id"], event.get("event_id") or event["source_event_id"])
                    found[key] = min(found.get(key, record.timestamp), record.timestamp)
                if records and records[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
        return found
    finally:
        await consumer.stop()


async def readable_times(database_url: str, marks: tuple[int, int]) -> dict[EventKey, float]:
    """Each event's first commit time (ms) among the rows written above ``marks``."""
    connection = await asyncpg.connect(database_url)
    try:
        found: dict[EventKey, float] = {}
        for (table, position), mark in zip(
            (("ledger_entries", "entry_seq"), ("purchases_not_earned", "history_seq")), marks, strict=True
        ):
            for row in await connection.fetch(_READABLE.format(table=table, position=position), mark):
                key = (row["account_id"], row["source_event_id"])
                found[key] = min(found.get(key, row["at_ms"]), row["at_ms"])
        return found
    finally:
        await connection.close()


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile: the smallest value at least ``share`` of the values are at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def latency(
    published: dict[EventKey, int], readable: dict[EventKey, float], published_per_s: float, emitted: dict[EventKey, int]
) -> Latency:
    """``emitted``: each event's first accrual's producer timestamp (``broker_times`` on the accruals
    topic), which splits the delay into the worker's part and the rest (the sink and Postgres)."""
    delays = [readable[key] - at for key, at in published.items() if key in readable]
    if not delays:
        raise RuntimeError("no paced event reached Postgres")
    in_worker: list[float] = [emitted[key] - at for key, at in published.items() if key in readable and key in emitted] or [0.0]
    return Latency(
        events=len(delays),
        without_row=len(published) - len(delays),
        p50_ms=percentile(delays, 0.50),
        p99_ms=percentile(delays, 0.99),
        max_ms=max(delays),
        published_per_s=published_per_s,
        worker_p50_ms=percentile(in_worker, 0.50),
        worker_p99_ms=percentile(in_worker, 0.99),
        p99_by_second_ms=_by_second(published, readable),
    )


def _by_second(published: dict[EventKey, int], readable: dict[EventKey, float]) -> list[float]:
    if not published:
        return []
    first = min(published.values())
    seconds: dict[int, list[float]] = {}
    for key, at in published.items():
        if key in readable:
            seconds.setdefault(int((at - first) // 1000), []).append(readable[key] - at)
    return [round(percentile(seconds[s], 0.99)) if s in seconds else 0.0 for s in range(max(seconds, default=-1) + 1)]
