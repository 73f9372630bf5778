"""Create the catalogue's topics if missing; refuse to run on a topic with the wrong partition count."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from topics.catalogue import Catalogue

log = logging.getLogger(__name__)


class TopicMismatchError(RuntimeError):
    """An existing topic does not match the catalogue (the message names it and both counts)."""


async def ensure_topics(
    bootstrap_servers: str, catalogue: Catalogue, replication_factor: int = 1, **client_options: Any
) -> list[str]:
    """Create the missing topics; return their names. Raise TopicMismatchError on a partition mismatch."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options)
    await admin.start()
    try:
        existing = await _partition_counts(admin)
        problems = [
            f"topic {t.name} has {existing[t.name]} partitions, the catalogue says {t.partitions}"
            for t in catalogue.all()
            if t.name in existing and existing[t.name] != t.partitions
        ]
        if problems:
            raise TopicMismatchError("; ".join(problems))
        missing = [t for t in catalogue.all() if t.name not in existing]
        if missing:
            await admin.create_topics(
                [NewTopic(t.name, t.partitions, replication_factor, topic_configs=t.config()) for t in missing]
            )
            log.info("created topics %s", ", ".join(t.name for t in missing))
        return [t.name for t in missing]
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    names = await admin.list_topics()
    if not names:
        return {}
    described = await admin.describe_topics(list(names))
    return {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}
