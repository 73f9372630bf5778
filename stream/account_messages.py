"""Publishing an account's segments and offer activations to their compacted topics.

An activation is keyed ``account_id:offer_id`` (compaction keeps the last word per offer) but
partitioned by ``account_id`` (``topics.catalogue.account_partition``), so it lands where the
account's card events are; the matcher folds both into the account's profile
(``stream.core.profiles``).

Erasing an account (``stream.gdpr``) publishes tombstones for its profile and every activation
key, and an erasure instruction on the co-partitioned erasures topic.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from schemas.codec import Codec
from stream.producing import Message, send_once
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


async def publish_segments(
    settings: Settings, codec: Codec, topic: Topic, account_id: str, segments: Iterable[str], language: str | None = None
) -> None:
    """The account's profile: its segments, and the language of its notifications (None: the bank's default)."""
    value = codec.encode(
        "account_profile",
        {"account_id": account_id, "segments": sorted(set(segments)), "updated_at": datetime.now(UTC), "language": language},
    )
    await send_once(settings, [(topic.name, account_id.encode(), value, account_partition(account_id, topic.partitions))])


def erasure_message(codec: Codec, account_id: str, at: datetime, partitions: int) -> tuple[int, bytes, bytes]:
    """(partition, key, value) of an instruction to erase an account (``stream.gdpr``): the worker
    owning the account's partition deletes its state and profile and refuses its later messages."""
    value = codec.encode("account_erasure", {"account_id": account_id, "requested_at": at})
    return account_partition(account_id, partitions), account_id.encode(), value


def tombstones(account_id: str, offer_ids: Iterable[str], profiles: Topic, activations: Topic) -> list[Message]:
    """The tombstones that erase an account from the compacted account topics: its profile (key
    ``account_id``) and each of its activations (key ``account_id:offer_id``), all on the account's
    partition, so compaction drops every value the account had there."""
    messages: list[Message] = [(profiles.name, account_id.encode(), None, account_partition(account_id, profiles.partitions))]
    partition = account_partition(account_id, activations.partitions)
    messages += [(activations.name, f"{account_id}:{offer}".encode(), None, partition) for offer in sorted(set(offer_ids))]
    return messages
