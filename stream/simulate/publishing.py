"""Publishing the simulator's stream to the broker at a chosen rate, with a progress display.

Each message is encoded with its role's Avro subject (bad messages go as the bytes they are), and
account messages go to the partition of their account's card events. Kept apart from the stream
itself, which is pure: this is the only part that needs a broker.
"""

from __future__ import annotations

import asyncio
import sys
import time

from schemas.codec import Codec
from stream.producing import producer as make_producer
from stream.settings import Settings
from stream.simulate.lifecycle import Scenario
from stream.simulate.messages import ROLE_SUBJECTS
from stream.simulate.ordering import generate
from topics.catalogue import Catalogue, account_partition


async def publish(
    settings: Settings,
    codec: Codec,
    topics: Catalogue,
    scenario: Scenario,
    rate: float,
    stop: asyncio.Event,
    progress: bool = True,
) -> int:
    """Publish the scenario at ``rate`` events per second (0: as fast as possible); return the count."""
    from tqdm import tqdm

    names = {
        "authorizations": topics.authorizations.name,
        "settlements": topics.settlements.name,
        "profiles": topics.profiles.name,
        "activations": topics.activations.name,
    }
    producer = make_producer(settings, linger_ms=5)
    await producer.start()
    bar = tqdm(total=None, unit="ev", disable=not progress, file=sys.stderr, desc="card events", mininterval=0.5)
    sent = 0
    started = time.monotonic()
    try:
        for message in generate(scenario, codec):
            if stop.is_set():
                break
            value = message.raw if message.raw is not None else codec.encode(ROLE_SUBJECTS[message.role], message.record or {})
            # Account messages go where the account's card events go (topics.catalogue.account_partition).
            partition = (
                account_partition(message.record["account_id"], topics.profiles.partitions)
                if message.role in ("profiles", "activations") and message.record
                else None
            )
            await producer.send(names[message.role], value, key=message.key, partition=partition)
            sent += 1
            bar.update(1)
            if rate > 0 and sent % max(1, int(rate // 20)) == 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        bar.close()
        await producer.stop()
    return sent
