"""The benchmark's logs and topic sets: what it publishes, and where.

A log is the chaos run's seeded log (``stream.localstack.chaos_log``: the simulator's lifecycle
mix, 5% re-sent events and conflicting duplicates, the timeline moved years ahead so that no
clock tick makes anything fall due) without poison messages, cut in two: the card events
preloaded before a measurement, and those published later (paced for the latency, or after a
worker's stop for its restart). A topic set is one prefix, consumer groups and table changelogs
of its own, with eight partitions; its card-event topics stamp each message with the broker's
clock on arrival (``LogAppendTime``), so a message's timestamp is when the broker took it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.codec import Codec
from stream.composition import System
from stream.core.offers import Offer
from stream.localstack.chaos_clients import publish_accounts
from stream.localstack.chaos_log import Message, chaos_log
from stream.localstack.chaos_oracle import partitions
from stream.offer_admin import publish_offers
from stream.settings import Settings
from topics.catalogue import Catalogue

PARTITIONS = 8  # every topic set: two workers get four partitions each
PHASES = ("authorizations", "settlements")  # the order a preloaded log is drained in (``in_phases``)


@dataclass(frozen=True)
class BenchLog:
    account_messages: list[Message]  # segments and activations, published first
    preloaded: list[Message]  # card events published before the measurement
    later: list[Message]  # card events published after it started


def bench_log(seed: int, preloaded: int, later: int, codec: Codec) -> BenchLog:
    """Exactly ``preloaded`` then ``later`` card events of the seeded log (the chaos log's size is
    approximate: it is asked for a little more and cut)."""
    wanted = preloaded + later
    asked = int(wanted * 1.03) + 300
    while True:
        log = chaos_log(seed, asked, 0, PARTITIONS, codec)
        cards = log.card_messages
        if len(cards) >= wanted:
            return BenchLog(log.account_messages, cards[:preloaded], cards[preloaded:wanted])
        asked = int(asked * 1.1)


def in_phases(messages: list[Message]) -> list[list[Message]]:
    """The card events as the throughput stages publish and drain them: the authorisations, then the
    settlements (each in the log's order). A worker reading two topics that both hold a backlog
    takes them in its fetcher's order, and the rows depend on it: a clearing decided before its
    authorisation is a force post (confirmed at once, and a reconciliation item; the late
    authorisation changes nothing), where the other order makes a pending line, then its
    confirmation. Drained in these phases, each account's authorisations come before its
    settlements, as a card processor sends them (a clearing follows its authorisation by a day or
    more), and the rows depend on the seed alone."""
    return [[m for m in messages if m[0] == role] for role in PHASES]


@dataclass(frozen=True)
class TopicSet:
    """One prefix of topics, with the groups and changelogs of its own processes."""

    name: str
    env: dict[str, str]

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    @property
    def catalogue(self) -> Catalogue:
        return self.settings.topics()


def topic_set(name: str, base_env: dict[str, str], run_id: str) -> TopicSet:
    run = f"bench-{run_id}-{name}"
    env = {
        **base_env,
        "TOPIC_PREFIX": f"{run}.",
        "APP_ID": run,
        "SINK_GROUP_ID": f"{run}-sink",
        "TOPIC_PARTITIONS": str(PARTITIONS),
        "PYTHONUNBUFFERED": "1",
        "EVENT_AHEAD_LIMIT_DAYS": "off",  # the log's timeline is dated years ahead of the worker's clock on purpose
    }
    return TopicSet(name, env)


async def prepare(topics: TopicSet, offers: list[Offer], codec: Codec) -> None:
    """Create the set's topics (the card-event ones stamped by the broker), publish the offers."""
    settings, catalogue = topics.settings, topics.catalogue
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        stamped = {"message.timestamp.type": "LogAppendTime"}
        await admin.create_topics(
            [NewTopic(t.name, t.partitions, 1, topic_configs={**t.config(), **stamped}) for t in catalogue.inputs()]
        )
    finally:
        await admin.close()
    await System(settings).create_topics()  # the others, and the tables' changelogs
    await publish_offers(settings, codec, catalogue.offers.name, offers)


async def publish_all(settings: Settings, catalogue: Catalogue, messages: list[Message], chunk: int = 5_000) -> None:
    """Publish card events in order, as fast as the broker takes them (deliveries awaited by chunk)."""
    names = {"authorizations": catalogue.authorizations.name, "settlements": catalogue.settlements.name}
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=20, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        for start in range(0, len(messages), chunk):
            sends = [await producer.send(names[role], value, key=key) for role, key, value, _ in messages[start : start + chunk]]
            await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def preload(topics: TopicSet, log: BenchLog, cards: bool = True) -> None:
    """The account messages (each to its account's partition), then (``cards``) the preloaded card events."""
    settings, catalogue = topics.settings, topics.catalogue
    await publish_accounts(settings, catalogue, log.account_messages)
    if cards:
        await publish_all(settings, catalogue, log.preloaded)


async def message_count(settings: Settings, topic_names: list[str]) -> int:
    """How many messages the topics hold (the sum of their partitions' end offsets)."""
    return sum((await end_offsets(settings, topic_names)).values())


async def end_offsets(settings: Settings, topic_names: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        tps = [tp for name in topic_names for tp in await partitions(settings.kafka_bootstrap_servers, name)]
        ends: dict[Any, int] = await consumer.end_offsets(tps)
        return dict(ends)
    finally:
        await consumer.stop()
