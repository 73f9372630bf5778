"""Input messages read on a partition other than their account's, forwarded to it.

Every input the matcher decides is co-partitioned by account: an account's state, its profile and
activations, its clock ticks and its answers all live on ``account_partition`` (murmur2, Kafka's
default partitioner, as the Java clients and aiokafka compute it). A producer that partitions
otherwise puts an account's messages elsewhere: librdkafka's default (``consistent_random``, CRC32),
a client naming a partition itself. Decided where it was read, such a message made its account a
state on the wrong partition: its profile and activations were not joined (they are on the
account's partition), and once that state was read back from the local store (after a restart, or
once the state cache let it go) its rows were looked for on the account's partition, not found, and
the worker failed on the message for good.

So the matcher decides nothing off its account's partition. A message that decodes, is valid and
is keyed by its account is sent again, the same key and bytes and the same timestamp, to the same
topic on the account's partition, and decided there with the account's other messages; its own
offset is committed once that copy is delivered, like a dead letter's. A crash in between sends the
copy twice, and the second is a redelivery the account's state recognises by its event id. Counted
by topic (``cashback_misrouted_forwarded_total``) and logged once per partition it was read on: a
producer that does this is misconfigured (librdkafka clients: ``partitioner=murmur2_random``), and
each of its messages costs one more send and read.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from stream.metrics import MISROUTED
from stream.producing import AppSends

log = logging.getLogger(__name__)

_told: set[tuple[str, int]] = set()  # the partitions already named in the log


async def forward(
    sends: AppSends, topic: str, partition: int, key: bytes | None, value: bytes | None, home: int, staged: Any
) -> Awaitable[Any]:
    """Send the message read on ``topic[partition]`` again to ``topic[home]``, its account's
    partition, with its broker timestamp (``staged``: the message as the matcher's batch holds it,
    None outside the agent); returns the copy's delivery."""
    timestamp_s = staged.timestamp_s if staged is not None else None
    MISROUTED.labels(topic).inc()
    if (topic, partition) not in _told:
        _told.add((topic, partition))
        log.warning(
            "%s[%d] holds messages of accounts of other partitions (its producer does not partition by murmur2): "
            "each is forwarded to its account's partition",
            topic,
            partition,
        )
    return await sends.send(topic, key, value, home, timestamp_s=timestamp_s)
