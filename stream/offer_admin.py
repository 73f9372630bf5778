"""Publishing offers to the compacted offers topic (a tombstone removes one)."""

from __future__ import annotations

from typing import Iterable

from schemas.codec import Codec
from stream.offers import Offer
from stream.producing import send_once
from stream.settings import Settings


async def publish_offers(settings: Settings, codec: Codec, topic: str, offers: Iterable[Offer]) -> None:
    await send_once(settings, [(topic, o.offer_id.encode(), codec.encode("offer", o.to_record()), None) for o in offers])


async def remove_offers(settings: Settings, topic: str, offer_ids: Iterable[str]) -> None:
    await send_once(settings, [(topic, offer_id.encode(), None, None) for offer_id in offer_ids])
