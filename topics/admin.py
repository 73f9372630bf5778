"""Create the catalogue's topics if missing; refuse to run on a topic with the wrong partition count."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError, for_code

from topics.catalogue import Catalogue, Topic

log = logging.getLogger(__name__)


class TopicMismatchError(RuntimeError):
    """An existing topic does not match the catalogue (the message names it and both counts)."""


async def ensure_topics(
    bootstrap_servers: str, catalogue: Catalogue | Iterable[Topic], replication_factor: int = 1, **client_options: Any
) -> list[str]:
    """Create the missing topics (a catalogue's, or those given); return their names. Raise
    TopicMismatchError on a partition mismatch."""
    wanted = tuple(catalogue.all() if isinstance(catalogue, Catalogue) else catalogue)
    by_name = {t.name: t for t in wanted}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options)
    await admin.start()
    try:
        existing = await _partition_counts(admin, wanted)
        _check(wanted, existing)
        missing = [t for t in wanted if t.name not in existing]
        created: list[str] = []
        if missing:
            response = await admin.create_topics(
                [NewTopic(t.name, t.partitions, replication_factor, topic_configs=t.config()) for t in missing]
            )
            # aiokafka reports per-topic failures in the response instead of raising them.
            raced: list[Topic] = []
            for name, code, *_ in response.topic_errors:
                error = for_code(code) if code else None
                if error is None:
                    created.append(name)
                elif error is TopicAlreadyExistsError:  # created meanwhile by another process
                    raced.append(by_name[name])
                else:
                    raise error(f"cannot create topic {name}")
            if raced:
                _check(raced, await _wait_described(admin, raced))
            if created:
                log.info("created topics %s", ", ".join(created))
        return created
    finally:
        await admin.close()


def _check(topics: Iterable[Topic], existing: dict[str, int]) -> None:
    problems = [
        f"topic {t.name} has {existing[t.name]} partitions, the catalogue says {t.partitions}"
        for t in topics
        if t.name in existing and existing[t.name] != t.partitions
    ]
    if problems:
        raise TopicMismatchError("; ".join(problems))


async def _wait_described(admin: AIOKafkaAdminClient, topics: list[Topic], timeout_s: float = 10.0) -> dict[str, int]:
    """Partition counts of topics the broker says exist, waiting for its metadata to show them."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        counts = await _partition_counts(admin, topics)
        if len(counts) == len(topics) or asyncio.get_running_loop().time() > deadline:
            missing = [t.name for t in topics if t.name not in counts]
            if missing:
                raise TopicMismatchError(f"topics {', '.join(missing)} exist but cannot be described")
            return counts
        await asyncio.sleep(0.2)


async def _partition_counts(admin: AIOKafkaAdminClient, topics: Iterable[Topic]) -> dict[str, int]:
    """Partition counts of those of ``topics`` that exist."""
    described = await admin.describe_topics([t.name for t in topics])
    counts: dict[str, int] = {}
    for description in described:
        code = description.get("error_code", 0)
        if code == UnknownTopicOrPartitionError.errno:
            continue
        if code:
            raise for_code(code)(f"cannot describe topic {description['topic']}")
        counts[description["topic"]] = len(description["partitions"])
    return counts
