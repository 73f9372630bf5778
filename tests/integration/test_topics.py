"""Topics are created from the catalogue if missing, and an existing topic with the wrong
partition count stops start-up with a message naming it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from topics.admin import TopicMismatchError, ensure_topics
from topics.catalogue import catalogue

pytestmark = pytest.mark.integration


def test_missing_topics_are_created_once(kafka_bootstrap: str) -> None:
    topics = catalogue(f"t-{uuid.uuid4().hex[:6]}.", partitions=3)
    created = asyncio.run(ensure_topics(kafka_bootstrap, topics))
    assert sorted(created) == sorted(t.name for t in topics.all())
    assert asyncio.run(ensure_topics(kafka_bootstrap, topics)) == []


def test_wrong_partition_count_is_a_clear_error(kafka_bootstrap: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:6]}."

    async def create_wrong() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(prefix + "accruals", 2, 1)])
        finally:
            await admin.close()

    asyncio.run(create_wrong())
    with pytest.raises(TopicMismatchError, match=rf"topic {prefix}accruals has 2 partitions, the catalogue says 4"):
        asyncio.run(ensure_topics(kafka_bootstrap, catalogue(prefix, partitions=4)))
