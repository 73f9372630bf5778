"""A card-processor simulator: seeded, realistic event streams, published at a chosen rate.

``generate`` is pure (a seed gives the same stream every time), so tests and the oracle can use
the very events the broker saw. Card tokens and account ids are synthetic; no card number is ever
generated except the deliberately bad "card number in a field" messages, whose digits are random
at run time and which must end in the dead-letter topic.

This package is the simulator's one import path (``stream.simulate``); its parts:
``stream.simulate.lifecycle`` (the merchants, the purchase shapes and one purchase's life),
``stream.simulate.messages`` (the outgoing message, each role's Avro subject, the bad messages),
``stream.simulate.ordering`` (the scenario's messages in publication order) and
``stream.simulate.publishing`` (publishing them to the broker).
"""

from __future__ import annotations

from stream.simulate.lifecycle import (
    CASH_MCCS,
    CHANNELS,
    DAY,
    MERCHANT_TIMEZONES,
    MERCHANTS,
    SHAPES,
    Purchase,
    Scenario,
    account_id,
)
from stream.simulate.messages import ROLE_SUBJECTS, Outgoing, bad_message
from stream.simulate.ordering import ACTIVATED_OFFER, SEGMENTS, account_messages, generate
from stream.simulate.publishing import publish

__all__ = [
    "ACTIVATED_OFFER",
    "CASH_MCCS",
    "CHANNELS",
    "DAY",
    "MERCHANTS",
    "MERCHANT_TIMEZONES",
    "ROLE_SUBJECTS",
    "SEGMENTS",
    "SHAPES",
    "Outgoing",
    "Purchase",
    "Scenario",
    "account_id",
    "account_messages",
    "bad_message",
    "generate",
    "publish",
]
