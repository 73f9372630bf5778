"""Card events as the rules engine sees them, and the checks that send bad ones to dead letters.

A decoded Avro record becomes a ``CardEvent`` only after ``validate`` found nothing wrong; what is
wrong is a ``Rejection`` value (a reason code and the field's name, never its value).
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from stream.money import is_known_currency


class EventType(str, enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    INCREMENTAL_AUTHORIZATION = "INCREMENTAL_AUTHORIZATION"
    AUTHORIZATION_REVERSAL = "AUTHORIZATION_REVERSAL"
    AUTHORIZATION_EXPIRY = "AUTHORIZATION_EXPIRY"
    CLEARING = "CLEARING"
    REFUND = "REFUND"
    CHARGEBACK = "CHARGEBACK"
    CHARGEBACK_REVERSAL = "CHARGEBACK_REVERSAL"
    # Internal, made by time passing (stream.lifecycle); no card processor sends it, and the Avro
    # enums do not have it, so it cannot arrive from a topic.
    RETURN_WINDOW_ENDED = "RETURN_WINDOW_ENDED"


APPROVED_RESPONSE_CODES = frozenset({"00", "08", "10", "11"})  # approved, honour with id, partial, VIP


class RejectReason(str, enum.Enum):
    """Why a message went to the dead-letter topic. Values are the ``reason`` codes there."""

    MISSING_FIELD = "missing_field"
    NEGATIVE_AMOUNT = "negative_amount"
    UNKNOWN_CURRENCY = "unknown_currency"
    INVALID_MCC = "invalid_mcc"
    INVALID_FIELD = "invalid_field"
    CARD_NUMBER_DETECTED = "card_number_detected"


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    field: str

    def detail(self) -> str:
        return f"field {self.field}: {self.reason.value}"


@dataclass(frozen=True, slots=True)
class CardEvent:
    event_id: str
    event_type: EventType
    occurred_at: datetime
    account_id: str
    card_token: str
    transaction_ref: str
    original_transaction_ref: str | None
    processing_code: str
    response_code: str
    amount_minor: int
    currency: str
    billing_amount_minor: int
    billing_currency: str
    cashback_at_pos_minor: int
    mcc: str
    merchant_id: str
    merchant_name: str
    merchant_country: str
    merchant_timezone: str | None
    channel: str
    clearing_sequence: int | None = None
    clearing_count: int | None = None

    @property
    def approved(self) -> bool:
        return self.response_code in APPROVED_RESPONSE_CODES

    @property
    def occurred_at_ms(self) -> int:
        return int(self.occurred_at.timestamp() * 1000)

    def fingerprint(self) -> str:
        """Digest of the content: the same event_id with another fingerprint is a conflict."""
        canonical = repr(tuple(getattr(self, name) for name in self.__slots__))
        return hashlib.blake2b(canonical.encode(), digest_size=12).hexdigest()


_REQUIRED_TEXT = ("event_id", "account_id", "card_token", "transaction_ref", "merchant_id")
_AMOUNTS = ("amount_minor", "billing_amount_minor", "cashback_at_pos_minor")
_MCC = re.compile(r"[0-9]{4}")
# Groups of ASCII digits joined by single spaces or dashes: "4111 1111-1111 1111 12".
_DIGIT_GROUPS = re.compile(r"[0-9]+(?:[ -][0-9]+)*")


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def looks_like_card_number(text: str) -> bool:
    """True when ``text`` holds 13 to 19 digits passing the Luhn check, written together or in
    groups split by spaces or dashes, even beside other digit groups ("<card> 12")."""
    for match in _DIGIT_GROUPS.finditer(text):
        groups = re.split(r"[ -]", match.group())
        for first in range(len(groups)):
            digits = ""
            for group in groups[first:]:
                digits += group
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and luhn_valid(digits):
                    return True
    return False


def validate(record: Mapping[str, Any]) -> Rejection | None:
    """The first thing wrong with a decoded card-event record, or None. Never looks at values in
    messages it returns: a card number is reported by field name only."""
    for name, value in record.items():
        if isinstance(value, str) and looks_like_card_number(value):
            return Rejection(RejectReason.CARD_NUMBER_DETECTED, name)
    for name in _REQUIRED_TEXT:
        if not record.get(name):
            return Rejection(RejectReason.MISSING_FIELD, name)
    for name in _AMOUNTS:
        if record.get(name, 0) < 0:
            return Rejection(RejectReason.NEGATIVE_AMOUNT, name)
    for name in ("currency", "billing_currency"):
        if not is_known_currency(record.get(name, "")):
            return Rejection(RejectReason.UNKNOWN_CURRENCY, name)
    if not _MCC.fullmatch(record.get("mcc", "")):
        return Rejection(RejectReason.INVALID_MCC, "mcc")
    if record.get("cashback_at_pos_minor", 0) > record.get("amount_minor", 0):
        return Rejection(RejectReason.INVALID_FIELD, "cashback_at_pos_minor")
    sequence, count = record.get("clearing_sequence"), record.get("clearing_count")
    if (sequence is None) != (count is None) or (count is not None and not 1 <= sequence <= count):
        return Rejection(RejectReason.INVALID_FIELD, "clearing_sequence")
    if record["event_type"] in ("REFUND", "CHARGEBACK", "CHARGEBACK_REVERSAL") and not (
        record.get("original_transaction_ref") or record.get("transaction_ref")
    ):
        return Rejection(RejectReason.MISSING_FIELD, "original_transaction_ref")
    return None


def to_event(record: Mapping[str, Any]) -> CardEvent:
    """A validated record as a CardEvent (call ``validate`` first)."""
    return CardEvent(
        event_id=record["event_id"],
        event_type=EventType(record["event_type"]),
        occurred_at=record["occurred_at"],
        account_id=record["account_id"],
        card_token=record["card_token"],
        transaction_ref=record["transaction_ref"],
        original_transaction_ref=record.get("original_transaction_ref"),
        processing_code=record["processing_code"],
        response_code=record.get("response_code", "00"),
        amount_minor=record["amount_minor"],
        currency=record["currency"],
        billing_amount_minor=record["billing_amount_minor"],
        billing_currency=record["billing_currency"],
        cashback_at_pos_minor=record.get("cashback_at_pos_minor", 0),
        mcc=record["mcc"],
        merchant_id=record["merchant_id"],
        merchant_name=record.get("merchant_name", ""),
        merchant_country=record.get("merchant_country", ""),
        merchant_timezone=record.get("merchant_timezone"),
        channel=record["channel"],
        clearing_sequence=record.get("clearing_sequence"),
        clearing_count=record.get("clearing_count"),
    )
