"""Offers in and out of the system: read from a YAML file, published to the compacted offers topic
(a tombstone removes one)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from schemas.codec import Codec
from stream.core.offer_parsing import parse_offer
from stream.core.offers import Offer, OfferError
from stream.producing import send_once
from stream.settings import Settings


async def publish_offers(settings: Settings, codec: Codec, topic: str, offers: Iterable[Offer]) -> None:
    await send_once(settings, [(topic, o.offer_id.encode(), codec.encode("offer", o.to_record()), None) for o in offers])


async def remove_offers(settings: Settings, topic: str, offer_ids: Iterable[str]) -> None:
    await send_once(settings, [(topic, offer_id.encode(), None, None) for offer_id in offer_ids])


def load_offers_file(path: Path) -> list[Offer]:
    """Offers from a YAML file ``{offers: [...]}``; OfferError on the first invalid field, and on
    an offer id given twice."""
    document = yaml.safe_load(Path(path).read_text())
    if not isinstance(document, dict) or not isinstance(document.get("offers"), list):
        raise OfferError("?", "offers", f"{path}: expected a top-level 'offers:' list")
    offers = [parse_offer(raw) for raw in document["offers"]]
    seen: set[str] = set()
    for offer in offers:
        if offer.offer_id in seen:
            raise OfferError(offer.offer_id, "offer_id", "given twice in the file")
        seen.add(offer.offer_id)
    return offers
