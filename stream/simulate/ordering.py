"""The simulator's stream: the messages of a scenario in publication order (``generate``).

Account messages come first (segments and offer activations, as the bank's systems would have
published them), then the purchases of the lifecycle mix (``stream.simulate.lifecycle``), one
step apart, their later events interleaved by step, with some events sent twice, some sent again
with other content, and, given a codec, bad messages (``stream.simulate.messages``) mixed in; and
every ``burst_every`` purchases, a burst of small purchases at one merchant that the abuse rules
hold (``stream.simulate.lifecycle.burst``).
Pure: a seed gives the same stream every time, so tests and the oracle can use the very events
the broker saw.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from schemas.codec import Codec
from stream.simulate.lifecycle import Purchase, Scenario, account_id, burst
from stream.simulate.messages import Outgoing, bad_message

SEGMENTS = (("vip", 10), ("new", 7))  # every 10th account is vip, every 7th new
ACTIVATED_OFFER = "weekend-dining-vip"  # an offer of deploy/offers/example.yaml that needs activation


def account_messages(scenario: Scenario) -> Iterator[Outgoing]:
    """Segments for some accounts, with the language of their notifications (every other one
    French, the rest English; accounts without a profile get the bank's default), and an activation
    of the offer that needs one for every third account, a day before the first purchase: what the
    bank's systems would have published."""
    activated_at = scenario.start - timedelta(days=1)
    for number in range(scenario.accounts):
        account = account_id(number)
        segments = [name for name, every in SEGMENTS if number % every == 0]
        if segments:
            language = "fr" if number % 2 == 0 else "en"
            record = {"account_id": account, "segments": segments, "updated_at": activated_at, "language": language}
            yield Outgoing("profiles", account.encode(), record=record)
        if number % 3 == 0:
            record = {"account_id": account, "offer_id": ACTIVATED_OFFER, "active": True, "changed_at": activated_at}
            yield Outgoing("activations", f"{account}:{ACTIVATED_OFFER}".encode(), record=record)


def generate(scenario: Scenario, codec: Codec | None = None) -> Iterator[Outgoing]:
    """The scenario's messages in publication order. Purchases start one step apart; their later
    events (clearings, refunds...) are interleaved by step. With a codec, bad messages are mixed in."""
    rng = random.Random(scenario.seed)
    yield from account_messages(scenario)
    # (step, order, role, record, plain): a plain message (a burst's) is sent once as it is, and draws
    # nothing from ``rng``, so the stream around it is the one it would be without it.
    queue: list[tuple[int, int, str, dict[str, Any], bool]] = []
    order = 0
    number = 0
    while scenario.purchases == 0 or number < scenario.purchases or queue:
        if scenario.purchases == 0 or number < scenario.purchases:
            purchase = Purchase(rng, scenario, number)
            for delay, role, record in purchase.events():
                heapq.heappush(queue, (number + delay, order, role, record, False))
                order += 1
            if scenario.burst_every and number % scenario.burst_every == scenario.burst_every - 1:
                for delay, role, record in burst(scenario, number):
                    heapq.heappush(queue, (number + delay, order, role, record, True))
                    order += 1
            number += 1
        while queue and (queue[0][0] <= number or (scenario.purchases and number >= scenario.purchases)):
            _, _, role, record, plain = heapq.heappop(queue)
            key = record["account_id"].encode()
            yield Outgoing(role, key, record=record)
            if plain:
                continue
            if rng.random() < scenario.duplicate_ratio:
                yield Outgoing(role, key, record=record)
            if rng.random() < scenario.conflict_ratio:  # same id, other content: quarantined, never credited
                yield Outgoing(
                    role,
                    key,
                    record=dict(
                        record,
                        amount_minor=record["amount_minor"] + 100,
                        billing_amount_minor=record["billing_amount_minor"] + 100,
                    ),
                    bad="conflict",
                )
            if codec is not None and rng.random() < scenario.bad_ratio:
                yield bad_message(rng, codec, record, role)
