"""What the matcher knows of an account beside its card events: segments and offer activations.

Both arrive on compacted topics co-partitioned with the card events, so the worker that owns an
account's purchases also receives its profile and activations and keeps them in a table. An
activation is keyed ``account_id:offer_id`` (compaction keeps the last word per offer) but
partitioned by ``account_id``: ``account_partition`` computes the partition the card events of that
account use (Kafka's default murmur2 partitioner, as every client computes it).
"""

from __future__ import annotations

from datetime import datetime, timezone
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterable

from aiokafka.partitioner import murmur2

from schemas.codec import Codec
from stream.producing import send_once
from stream.settings import Settings

if TYPE_CHECKING:
    from stream.rules import AccountProfile

Profile = dict[str, Any]  # {"segments": [...], "activations": {offer_id: activated_at_ms}}


def account_partition(account_id: str, partitions: int) -> int:
    """The partition of ``account_id``'s card events under the default partitioner."""
    return (murmur2(account_id.encode()) & 0x7FFFFFFF) % partitions


def new_profile() -> Profile:
    return {"segments": [], "activations": {}}


def to_account_profile(profile: Profile | None) -> "AccountProfile":
    """The engine's view of a stored profile (activation times back to UTC datetimes)."""
    from stream.rules import AccountProfile

    if not profile:
        return AccountProfile()
    return AccountProfile(
        segments=frozenset(profile["segments"]),
        activations=MappingProxyType(
            {offer: datetime.fromtimestamp(ms / 1000, tz=timezone.utc) for offer, ms in profile["activations"].items()}
        ),
    )


def apply_activation(profile: Profile | None, record: dict[str, Any]) -> Profile:
    """The profile after an activation record (a deactivation removes the offer). Pure."""
    profile = dict(profile or new_profile())
    activations = dict(profile["activations"])
    if record.get("active", True):
        changed_at = record["changed_at"]
        activations[record["offer_id"]] = int(changed_at.timestamp() * 1000) if isinstance(changed_at, datetime) else int(changed_at)
    else:
        activations.pop(record["offer_id"], None)
    profile["activations"] = activations
    return profile


def apply_segments(profile: Profile | None, record: dict[str, Any] | None) -> Profile:
    """The profile after a profile record (None: a tombstone, erasing the segments). Pure."""
    profile = dict(profile or new_profile())
    profile["segments"] = sorted(set(record["segments"])) if record else []
    return profile


def activation_message(
    codec: Codec, account_id: str, offer_id: str, active: bool, at: datetime, partitions: int
) -> tuple[int, bytes, bytes]:
    """(partition, key, value) of an activation."""
    value = codec.encode(
        "offer_activation", {"account_id": account_id, "offer_id": offer_id, "active": active, "changed_at": at}
    )
    return account_partition(account_id, partitions), f"{account_id}:{offer_id}".encode(), value


async def publish_activation(
    settings: Settings, codec: Codec, topic: str, account_id: str, offer_id: str, active: bool = True,
    at: datetime | None = None,
) -> datetime:
    at = at or datetime.now(timezone.utc)
    partition, key, value = activation_message(codec, account_id, offer_id, active, at, settings.topic_partitions)
    await send_once(settings, [(topic, key, value, partition)])
    return at


async def publish_segments(settings: Settings, codec: Codec, topic: str, account_id: str, segments: Iterable[str]) -> None:
    value = codec.encode(
        "account_profile",
        {"account_id": account_id, "segments": sorted(set(segments)), "updated_at": datetime.now(timezone.utc)},
    )
    await send_once(settings, [(topic, account_id.encode(), value, account_partition(account_id, settings.topic_partitions))])
