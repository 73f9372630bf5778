"""Publishing an account's segments and offer activations to their compacted topics.

An activation is keyed ``account_id:offer_id`` (compaction keeps the last word per offer) but
partitioned by ``account_id`` (``topics.catalogue.account_partition``), so it lands where the
account's card events are; the matcher folds both into the account's profile
(``stream.core.profiles``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from schemas.codec import Codec
from stream.producing import send_once
from stream.settings import Settings
from topics.catalogue import Topic, account_partition


def activation_message(
    codec: Codec, account_id: str, offer_id: str, active: bool, at: datetime, partitions: int
) -> tuple[int, bytes, bytes]:
    """(partition, key, value) of an activation."""
    value = codec.encode("offer_activation", {"account_id": account_id, "offer_id": offer_id, "active": active, "changed_at": at})
    return account_partition(account_id, partitions), f"{account_id}:{offer_id}".encode(), value


async def publish_activation(
    settings: Settings,
    codec: Codec,
    topic: Topic,
    account_id: str,
    offer_id: str,
    active: bool = True,
    at: datetime | None = None,
) -> datetime:
    at = at or datetime.now(UTC)
    partition, key, value = activation_message(codec, account_id, offer_id, active, at, topic.partitions)
    await send_once(settings, [(topic.name, key, value, partition)])
    return at


async def publish_segments(settings: Settings, codec: Codec, topic: Topic, account_id: str, segments: Iterable[str]) -> None:
    value = codec.encode(
        "account_profile",
        {"account_id": account_id, "segments": sorted(set(segments)), "updated_at": datetime.now(UTC)},
    )
    await send_once(settings, [(topic.name, account_id.encode(), value, account_partition(account_id, topic.partitions))])
