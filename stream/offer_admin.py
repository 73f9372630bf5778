"""Publishing offers to the compacted offers topic (a tombstone removes one)."""

from __future__ import annotations

from typing import Iterable

from aiokafka import AIOKafkaProducer

from schemas.codec import Codec
from stream.offers import Offer
from stream.settings import Settings


async def publish_offers(settings: Settings, codec: Codec, topic: str, offers: Iterable[Offer]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True,
        **settings.kafka_client_options(),
    )
    await producer.start()
    try:
        for offer in offers:
            await producer.send(topic, codec.encode("offer", offer.to_record()), key=offer.offer_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def remove_offers(settings: Settings, topic: str, offer_ids: Iterable[str]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", **settings.kafka_client_options()
    )
    await producer.start()
    try:
        for offer_id in offer_ids:
            await producer.send(topic, None, key=offer_id.encode())
        await producer.flush()
    finally:
        await producer.stop()
