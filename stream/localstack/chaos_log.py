"""The chaos run's input: offers and a seeded event log, with the poison a worker must dead-letter.

The log is the simulator's lifecycle mix with re-sent events and conflicting duplicates, moved
``FUTURE`` ahead (with the offers' validity) so that the workers' clock ticks make nothing fall
due during the run. Campaign budgets are removed: a budget makes one account's reward depend on
other accounts' order, which no oracle can know.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from schemas.codec import Codec
from stream.composition import EXAMPLE_OFFERS
from stream.core.offers import Offer
from stream.offer_admin import load_offers_file
from stream.simulate import ROLE_SUBJECTS, Scenario, bad_message, generate
from topics.catalogue import account_partition

FUTURE = timedelta(weeks=261)  # about five years, whole weeks: the same weekdays

Message = tuple[str, bytes, bytes, int | None]  # role, key, value, partition (None: by key)


@dataclass(frozen=True)
class ChaosLog:
    account_messages: list[Message]  # published first, and processed before any card event
    card_messages: list[Message]


def chaos_offers() -> list[Offer]:
    return [
        dataclasses.replace(
            o,
            budget_minor=None,
            valid_from=o.valid_from and o.valid_from + FUTURE,
            valid_to=o.valid_to and o.valid_to + FUTURE,
            prices=tuple((currency, dataclasses.replace(price, budget_minor=None)) for currency, price in o.prices),
        )
        for o in load_offers_file(EXAMPLE_OFFERS)
    ]


def chaos_log(seed: int, events: int, poison: int, partitions: int, codec: Codec) -> ChaosLog:
    """About ``events`` card events and ``poison`` poison messages mixed in at seeded places."""
    rng = random.Random(seed)
    scenario = Scenario(
        seed=seed,
        accounts=max(100, events // 40),
        purchases=max(1, int(events / 2.2)),
        bad_ratio=0.0,
        duplicate_ratio=0.05,
        conflict_ratio=0.002,
        start=Scenario.start + FUTURE,
    )
    accounts: list[Message] = []
    cards: list[Message] = []
    goods: list[dict[str, Any]] = []
    for message in generate(scenario):
        record = message.record or {}
        value = codec.encode(ROLE_SUBJECTS[message.role], record)
        if message.role in ("profiles", "activations"):
            accounts.append((message.role, message.key, value, account_partition(record["account_id"], partitions)))
        else:
            cards.append((message.role, message.key, value, None))
            if len(goods) < 100 and message.role == "authorizations":
                goods.append(record)
    for bad in poison_messages(rng, codec, goods, poison):
        cards.insert(rng.randrange(len(cards) + 1), bad)
    return ChaosLog(accounts, cards)


def poison_messages(rng: random.Random, codec: Codec, goods: list[dict], count: int) -> list[Message]:
    """``count`` messages no worker can process: the simulator's bad messages, a message whose key
    is not its account, and one of about 1.04 MB (the broker takes it; a dead letter around it
    would not fit)."""
    result: list[Message] = []
    for n in range(count):
        good = dict(rng.choice(goods), event_id=f"poison-{n}")
        key = good["account_id"].encode()
        if n == 0:
            result.append(("authorizations", key, b"\x00" + rng.randbytes(1_040_000), None))
        elif n % 5 == 0:
            result.append(("authorizations", b"another-account", codec.encode(ROLE_SUBJECTS["authorizations"], good), None))
        else:
            bad = bad_message(rng, codec, good, "authorizations")
            result.append(("authorizations", bad.key, bad.raw or b"", None))
    return result
