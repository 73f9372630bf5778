"""The bank's instructions about an account's rewards (the ``account_instruction`` schema): a held
reward released or forfeited, a merchant flagged, a redemption (``stream.core.redemption_messages``),
validated and made events. ``stream.core.events.validate`` and ``to_event`` hand such records here;
like them, a rejection names the field, never its value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stream.core.card_numbers import looks_like_card_number
from stream.core.events import INSTRUCTION_TEXT_LIMIT, CardEvent, EventType, Instruction, Rejection, RejectReason
from stream.core.money import is_known_currency

_INSTRUCTION_IDS = frozenset({"event_id", "account_id", "transaction_ref", "offer_id", "merchant_id"})


def validate(record: Mapping[str, Any]) -> Rejection | None:
    """The first thing wrong with a decoded instruction (the ``account_instruction`` schema)."""
    for name, value in record.items():
        if isinstance(value, str) and looks_like_card_number(value, identifier=name in _INSTRUCTION_IDS):
            return Rejection(RejectReason.CARD_NUMBER_DETECTED, name)
    kind = record["instruction"]
    if kind == EventType.REDEEM.value:
        from stream.core import redemption_messages

        return redemption_messages.validate(record)
    needed = ("transaction_ref",) if kind != EventType.HOLD_MERCHANT.value else ("merchant_id", "until")
    for name in ("event_id", "account_id", "actor", "reason", *needed):
        if not record.get(name):
            return Rejection(RejectReason.MISSING_FIELD, name)
    if not (
        is_known_currency(record.get("currency", "")) or record.get("currency") == "PTS"
    ):  # PTS: a merchant flagged in points
        return Rejection(RejectReason.UNKNOWN_CURRENCY, "currency")
    for name in ("actor", "reason"):
        if len(record[name]) > INSTRUCTION_TEXT_LIMIT:
            return Rejection(RejectReason.INVALID_FIELD, name)
    return None


def to_event(record: Mapping[str, Any]) -> CardEvent:
    """A validated instruction as its account's event (call ``validate`` first)."""
    kind = EventType(record["instruction"])
    if kind is EventType.REDEEM:
        from stream.core import redemption_messages

        return redemption_messages.to_event(record)
    merchant = record.get("merchant_id") or ""
    until = record.get("until")
    return CardEvent(
        event_id=record["event_id"],
        event_type=kind,
        occurred_at=record["occurred_at"],
        account_id=record["account_id"],
        card_token="",
        # a merchant's flag belongs to no purchase: its id is kept apart, like a refund of an unknown purchase
        transaction_ref=record.get("transaction_ref") or f"merchant:{merchant}",
        original_transaction_ref=None,
        processing_code="PURCHASE",
        response_code="00",
        amount_minor=0,
        currency=record["currency"],
        billing_amount_minor=0,
        billing_currency=record["currency"],
        cashback_at_pos_minor=0,
        mcc="0000",
        merchant_id=merchant,
        merchant_name="",
        merchant_country="",
        merchant_timezone=None,
        channel="IN_STORE",
        note=Instruction(
            actor=record["actor"],
            reason=record["reason"],
            offer_id=record.get("offer_id"),
            until_ms=int(until.timestamp() * 1000) if until is not None else None,
        ),
    )
