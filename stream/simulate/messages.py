"""The simulator's messages as they go out: ``Outgoing`` (a record to encode, or bytes as they
are), the Avro subject of each role, and the deliberately bad messages a worker must dead-letter.

Bad messages are made from good records (``bad_message``). The only card numbers the simulator
ever makes are here, in the "card number in a field" messages: random at run time, valid by the
Luhn check, and bound for the dead-letter topic. Kept apart from the lifecycle mix because what
a worker must reject changes for other reasons than how a purchase unfolds.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Any

from schemas.codec import Codec
from stream.core.card_numbers import luhn_valid

# The Avro subject of each role's messages.
ROLE_SUBJECTS = {
    "authorizations": "authorization_event",
    "settlements": "settlement_event",
    "profiles": "account_profile",
    "activations": "offer_activation",
}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: ``record`` is a card-event record, or ``raw`` is bytes as they are."""

    role: str  # "authorizations", "settlements", "profiles" or "activations"
    key: bytes
    record: dict[str, Any] | None = None
    raw: bytes | None = None
    bad: str | None = None  # which bad kind, for the tests


def _random_card_number(rng: random.Random) -> str:
    while True:
        digits = "".join(rng.choice("0123456789") for _ in range(16))
        if luhn_valid(digits):
            return digits


def bad_message(rng: random.Random, codec: Codec, good: dict[str, Any], role: str) -> Outgoing:
    """A message a worker must dead-letter, made from ``good``: undecodable, an unknown schema id,
    an invalid MCC, a negative amount, an unknown currency or a card number."""
    subject = ROLE_SUBJECTS[role]
    kind = rng.choice(("undecodable", "unknown_schema_id", "invalid_mcc", "negative_amount", "unknown_currency", "card_number"))
    key = good["account_id"].encode()
    bad = dict(good, event_id=good["event_id"] + "-bad")
    if kind == "undecodable":
        return Outgoing(role, key, raw=b"\x00\x00\x00\x00\x01" + bytes(rng.randrange(256) for _ in range(7)), bad=kind)
    if kind == "unknown_schema_id":
        return Outgoing(role, key, raw=struct.pack(">bI", 0, 999_999) + b"\x02\x04", bad=kind)
    if kind == "invalid_mcc":
        bad["mcc"] = "54A1"
    elif kind == "negative_amount":
        bad["amount_minor"] = bad["billing_amount_minor"] = -bad["amount_minor"]
    elif kind == "unknown_currency":
        bad["billing_currency"] = "XYZ"
    else:
        bad["merchant_name"] = f"PAN {_random_card_number(rng)}"
    return Outgoing(role, key, raw=codec.encode(subject, bad), bad=kind)
