"""A compacted topic read whole by every worker: the offers (and, later, activations).

Not a consumer group: each worker assigns itself every partition, reads from the beginning to the
end offsets it saw at start (then ``ready`` is set), and keeps following updates. A tombstone (a
null value) removes the key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from schemas.codec import Codec, DecodeError
from stream.core.offer_parsing import UNATTRIBUTED_SPONSOR, parse_published_offer
from stream.core.offers import Offer, OfferBook, OfferError
from stream.deadletter import Stage
from stream.kafka_clients import start_client, stop_consumer
from stream.metrics import DEAD_LETTERS, OFFERS_LOADED

log = logging.getLogger(__name__)

T = TypeVar("T")


class CompactedTopicMirror(Generic[T]):
    def __init__(
        self,
        topic: str,
        subject: str,
        codec: Codec,
        parse: Callable[[dict], T],
        bootstrap_servers: str,
        **client_options: object,
    ) -> None:
        self.topic = topic
        self.subject = subject
        self.codec = codec
        self.parse = parse
        self.values: dict[bytes, T] = {}
        self.ready = asyncio.Event()
        self._bootstrap_servers = bootstrap_servers
        self._client_options = client_options
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    async def run(self) -> None:
        """Follow the topic forever; on a failure, log it and start again from the beginning
        (``ready`` stays set once it was: the last snapshot stays in use meanwhile)."""
        delay = 0.5
        while True:
            try:
                await self._follow()
            except (KafkaError, OSError, RuntimeError) as error:
                log.error("%s: reading failed (%s: %s); retrying in %.1fs", self.topic, type(error).__name__, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _follow(self) -> None:
        # No group: subscribed this way, aiokafka assigns this consumer every partition.
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self._bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            **self._client_options,
        )
        try:
            await start_client(consumer)  # inside the try: a cancel during start must still close it
            for _ in range(100):
                if consumer.assignment():
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"topic {self.topic} has no partitions (does it exist?)")
            assigned = sorted(consumer.assignment())
            await consumer.seek_to_beginning(*assigned)
            end = await consumer.end_offsets(assigned)
            remaining = {tp for tp in assigned if end[tp] > 0}
            if not remaining:
                self._loaded()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                changed = False
                for tp, records in batches.items():
                    for record in records:
                        changed = self._apply(record.key, record.value) or changed
                    if tp in remaining and await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
                        if not remaining:
                            self._loaded()
                if changed and self.ready.is_set():
                    self._notify()
        finally:
            await stop_consumer(consumer)

    def _loaded(self) -> None:
        log.info("%s: %d records loaded", self.topic, len(self.values))
        self.ready.set()
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def _apply(self, key: bytes | None, value: bytes | None) -> bool:
        if key is None:
            return False
        if value is None:
            return self.values.pop(key, None) is not None
        try:
            _, record = self.codec.decode(value, expected_subject=self.subject)
            value_parsed = self.parse(record)
        except (DecodeError, OfferError) as error:
            # Offers are validated before publishing; one that is not is counted and left out.
            DEAD_LETTERS.labels(Stage.OFFERS.value, type(error).__name__).inc()
            log.error("%s: record %r left out: %s", self.topic, key, error)
            return False
        self.values[key] = value_parsed
        return True


class OfferMirror(CompactedTopicMirror[Offer]):
    """The offers topic as an OfferBook snapshot, rebuilt on every change."""

    def __init__(self, topic: str, codec: Codec, bootstrap_servers: str, **client_options: object) -> None:
        super().__init__(topic, "offer", codec, parse_published_offer, bootstrap_servers, **client_options)
        self.book = OfferBook()
        self.on_change(self._rebuild)

    def _rebuild(self) -> None:
        self.book = OfferBook.of(self.values.values())
        for offer in self.book.offers:
            if offer.sponsor_id == UNATTRIBUTED_SPONSOR:
                log.warning(
                    "offer %s is MERCHANT-funded but was published without its sponsor_id (before offer v6): "
                    "its rewards are booked to sponsor %r until it is republished with one",
                    offer.offer_id,
                    UNATTRIBUTED_SPONSOR,
                )
        OFFERS_LOADED.set(len(self.book.offers))
