"""Redemptions' messages (``stream.core.redemptions``): the REDEEM instruction of the
``account_instruction`` schema (version 2), what the API checks before sending it and what the worker
checks again on reading it, and the ids and request tag both sides agree on. Like
``stream.core.events.validate``, a rejection names the field, never its value.

- **The redemption id** is ``r:<account>:<idempotency key>`` (``redemption_id``): the same key of the same
  account is the same redemption, whoever sends it and however often. It is the event's id, its
  transaction ref, and the ref of its entries.
- **The request tag** (``request_tag``): what was asked, ``(asked: <kind> <amount> <unit>, reference <ref>)``,
  closes the detail of the redemption's entry. The API compares a repeated request with it: the same key
  with another body is refused, never redeemed again nor taken for the first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from stream.core.card_numbers import looks_like_card_number
from stream.core.events import INSTRUCTION_TEXT_LIMIT, CardEvent, EventType, Redemption, Rejection, RejectReason, note_event
from stream.core.money import is_known_currency

REDEEMABLE = ("POINTS", "STORE_CREDIT")  # cash is paid out (stream.core.payouts), a charity reward given away
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:/#-]{0,63}")  # short, no brackets nor semicolons
MAX_AMOUNT_MINOR = 10**12  # at most 10^12 minor units (points) in one redemption


def redemption_id(account_id: str, key: str) -> str:
    """The redemption of ``key`` for ``account_id``: the same whoever computes it."""
    return f"r:{account_id}:{key}"


def request_tag(reward_kind: str, amount_minor: int, unit: str, reference: str) -> str:
    """What was asked, as the redemption's entry's detail ends with it."""
    return f"(asked: {reward_kind} {amount_minor} {unit}, reference {reference or '-'})"


_ASKED = re.compile(r"\(asked: (POINTS|STORE_CREDIT) ([0-9]+) ([A-Z]{3}), reference ([^()]*)\)$")


def asked_of(detail: str) -> tuple[str, int, str, str] | None:
    """(kind, amount, unit, reference: "" for none) of what a redemption's entry says was asked (``request_tag``)."""
    found = _ASKED.search(detail)
    if found is None:
        return None
    kind, amount, unit, reference = found.groups()
    return kind, int(amount), unit, "" if reference == "-" else reference


def unit_ok(reward_kind: str, unit: str) -> bool:
    """Points are in PTS; store credit in an ISO 4217 currency."""
    return unit == "PTS" if reward_kind == "POINTS" else unit != "PTS" and is_known_currency(unit)


def redeem_instruction(
    account_id: str, key: str, reward_kind: str, unit: str, amount_minor: int, reference: str, actor: str, at: Any
) -> dict[str, Any]:
    """The REDEEM instruction (an ``account_instruction`` v2 record) of one redemption."""
    rid = redemption_id(account_id, key)
    return {
        "event_id": rid,
        "instruction": EventType.REDEEM.value,
        "occurred_at": at,
        "account_id": account_id,
        "transaction_ref": rid,
        "offer_id": None,
        "merchant_id": None,
        "until": None,
        "currency": unit,
        "actor": actor,
        "reason": "redemption",
        "reward_kind": reward_kind,
        "amount_minor": amount_minor,
        "reference": reference or None,
    }


def validate(record: Mapping[str, Any]) -> Rejection | None:
    """The first thing wrong with a REDEEM instruction, or None."""
    for name in ("event_id", "account_id", "transaction_ref", "actor", "reference"):
        value = record.get(name)
        if isinstance(value, str) and looks_like_card_number(value, identifier=name != "actor"):
            return Rejection(RejectReason.CARD_NUMBER_DETECTED, name)
    for name in ("event_id", "account_id", "actor", "reward_kind", "amount_minor"):
        if record.get(name) in (None, ""):
            return Rejection(RejectReason.MISSING_FIELD, name)
    account, event_id = record["account_id"], record["event_id"]
    key = event_id[len(f"r:{account}:") :]
    if not event_id.startswith(f"r:{account}:") or not IDEMPOTENCY_KEY.fullmatch(key):
        return Rejection(RejectReason.INVALID_FIELD, "event_id")
    if record.get("transaction_ref") != event_id:
        return Rejection(RejectReason.INVALID_FIELD, "transaction_ref")
    if record["reward_kind"] not in REDEEMABLE:
        return Rejection(RejectReason.INVALID_FIELD, "reward_kind")
    if not unit_ok(record["reward_kind"], record.get("currency") or ""):
        return Rejection(RejectReason.UNKNOWN_CURRENCY, "currency")
    if not 0 < record["amount_minor"] <= MAX_AMOUNT_MINOR:
        return Rejection(RejectReason.INVALID_FIELD, "amount_minor")
    reference = record.get("reference")
    if reference is not None and not REFERENCE.fullmatch(reference):
        return Rejection(RejectReason.INVALID_FIELD, "reference")
    if len(record["actor"]) > INSTRUCTION_TEXT_LIMIT:
        return Rejection(RejectReason.INVALID_FIELD, "actor")
    return None


def to_event(record: Mapping[str, Any]) -> CardEvent:
    """A validated REDEEM instruction as its account's event."""
    account, event_id = record["account_id"], record["event_id"]
    note = Redemption(
        reward_kind=record["reward_kind"],
        amount_minor=record["amount_minor"],
        key=event_id[len(f"r:{account}:") :],
        reference=record.get("reference") or "",
        actor=record["actor"],
    )
    return note_event(event_id, EventType.REDEEM, account, record["occurred_at"], event_id, record["currency"], note)
