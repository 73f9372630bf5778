"""The bank's instructions about an account's held rewards (``schemas/account_instruction.avsc``),
as messages of the ``<prefix>account-instructions`` topic: keyed and partitioned by account like
its card events, so the worker owning the account decides them in its order (``stream.core.holds``).

Who sends them: the API's operations routes (a release or a forfeit, ``stream.api``) and the
sink's merchant-concentration scan (``stream.abuse_scan``). Neither writes the ledger: the engine
decides the movement, the sink writes it, so the account's state and its ledger never disagree.

Each instruction has its own id (a repeated request is a second instruction, which finds nothing
held and changes nothing), except a merchant's flag, whose id is the flag's: sent again after a
crash, it is the same event, a duplicate.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from schemas.codec import Codec
from stream.core.events import EventType
from topics.catalogue import Topic, account_partition

RELEASE, FORFEIT = EventType.RELEASE_HOLD.value, EventType.FORFEIT_HOLD.value


def review(
    kind: str, account_id: str, transaction_ref: str, offer_id: str | None, currency: str, actor: str, reason: str, at: datetime
) -> dict[str, Any]:
    """A release (``RELEASE``) or forfeit (``FORFEIT``) of what a purchase holds (one offer's share if named)."""
    return {
        "event_id": f"{kind.lower()}:{uuid.uuid4().hex}",
        "instruction": kind,
        "occurred_at": at,
        "account_id": account_id,
        "transaction_ref": transaction_ref,
        "offer_id": offer_id,
        "merchant_id": None,
        "until": None,
        "currency": currency,
        "actor": actor,
        "reason": reason,
    }


def merchant_hold(
    flag_seq: int, account_id: str, merchant_id: str, currency: str, until: datetime, reason: str, at: datetime
) -> dict[str, Any]:
    """Flag the account's purchases at a merchant until ``until`` (the scan's flag ``flag_seq``)."""
    return {
        "event_id": f"hold_merchant:{flag_seq}",
        "instruction": EventType.HOLD_MERCHANT.value,
        "occurred_at": at,
        "account_id": account_id,
        "transaction_ref": None,
        "offer_id": None,
        "merchant_id": merchant_id,
        "until": until,
        "currency": currency,
        "actor": "merchant_concentration scan",
        "reason": reason,
    }


def message(codec: Codec, topic: Topic, instruction: dict[str, Any]) -> tuple[str, bytes, bytes, int]:
    """(topic, key, value, partition) of an instruction: on its account's partition."""
    account_id = instruction["account_id"]
    value = codec.encode("account_instruction", instruction)
    return topic.name, account_id.encode(), value, account_partition(account_id, topic.partitions)
