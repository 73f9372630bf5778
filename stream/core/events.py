"""Card events as the rules engine sees them, and the checks that send bad ones to dead letters.

A decoded Avro record becomes a ``CardEvent`` only after ``validate`` found nothing wrong; what is
wrong is a ``Rejection`` value (a reason code and the field's name, never its value).

Card numbers in any text field are refused (reason ``card_number_detected``): what counts as one
is ``stream.core.card_numbers``.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stream.core.card_numbers import IDENTIFIER_FIELDS, SHORTEST_CARD_NUMBER, looks_like_card_number
from stream.core.money import is_known_currency


class EventType(str, enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    INCREMENTAL_AUTHORIZATION = "INCREMENTAL_AUTHORIZATION"
    AUTHORIZATION_REVERSAL = "AUTHORIZATION_REVERSAL"
    AUTHORIZATION_EXPIRY = "AUTHORIZATION_EXPIRY"
    CLEARING = "CLEARING"
    REFUND = "REFUND"
    CHARGEBACK = "CHARGEBACK"
    CHARGEBACK_REVERSAL = "CHARGEBACK_REVERSAL"
    # Internal, made by time passing (stream.core.lifecycle); no card processor sends it, and the Avro
    # enums do not have it, so it cannot arrive from a topic.
    RETURN_WINDOW_ENDED = "RETURN_WINDOW_ENDED"
    AVAILABLE_EXPIRY = "AVAILABLE_EXPIRY"  # unused points or store credit expire (stream.core.expiry)
    EXPIRY_NOTICE = "EXPIRY_NOTICE"  # the customer is told they will (stream.core.expiry, stream.core.notices)
    # The bank's instructions about an account's held rewards (stream.core.holds), on their own topic
    # (the account_instruction schema), never on the card processors' topics.
    RELEASE_HOLD = "RELEASE_HOLD"
    FORFEIT_HOLD = "FORFEIT_HOLD"
    HOLD_MERCHANT = "HOLD_MERCHANT"
    # Cash payouts (stream.core.payouts): a payout run for the account, the bank's answer to one of its
    # payouts, and an operator's opening of a wallet not known (a state stored before wallets were kept).
    PAYOUT_RUN = "PAYOUT_RUN"
    PAYOUT_RESULT = "PAYOUT_RESULT"
    OPEN_WALLET = "OPEN_WALLET"
    # A customer's redemption of points or store credit, asked through the API (stream.core.redemptions).
    REDEEM = "REDEEM"


INSTRUCTION_TYPES = frozenset({EventType.RELEASE_HOLD, EventType.FORFEIT_HOLD, EventType.HOLD_MERCHANT})


DAY_MS = 86_400_000  # a day in epoch milliseconds, as event times are counted

APPROVED_RESPONSE_CODES = frozenset({"00", "08", "10", "11"})  # approved, honour with id, partial, VIP


class RejectReason(str, enum.Enum):
    """Why a message went to the dead-letter topic. Values are the ``reason`` codes there."""

    MISSING_FIELD = "missing_field"
    NEGATIVE_AMOUNT = "negative_amount"
    UNKNOWN_CURRENCY = "unknown_currency"
    INVALID_MCC = "invalid_mcc"
    INVALID_FIELD = "invalid_field"
    CARD_NUMBER_DETECTED = "card_number_detected"
    AHEAD_OF_CLOCK = "ahead_of_clock"  # dated further ahead of the worker's clock than EVENT_AHEAD_LIMIT_DAYS


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    field: str
    why: str = ""  # more than the reason says, when it needs it (never a value a message could carry a card number in)

    def detail(self) -> str:
        return f"field {self.field}: {self.reason.value}" + (f" ({self.why})" if self.why else "")


@dataclass(frozen=True, slots=True)
class Instruction:
    """What an instruction adds to an event: who gave it and why (both on the ledger's entry), the
    one offer's share it is about (None: every held share of the purchase), and until when a
    merchant's purchases stay flagged (HOLD_MERCHANT)."""

    actor: str
    reason: str
    offer_id: str | None = None
    until_ms: int | None = None


@dataclass(frozen=True, slots=True)
class PayoutRun:
    """A payout run for one account (``stream.core.payouts``): its id (the scheduled UTC time, or
    the command's), and the minimum cash AVAILABLE paid out per currency (sorted (currency, minor));
    a currency not named is paid from ``default_minimum_minor`` (None: not paid)."""

    run_id: str
    minimums: tuple[tuple[str, int], ...] = ()
    default_minimum_minor: int | None = None


@dataclass(frozen=True, slots=True)
class PayoutAnswer:
    """The bank's answer to one payout: CONFIRMED or REJECTED (with the bank's reason code)."""

    payout_id: str
    status: str
    reason_code: str = ""


@dataclass(frozen=True, slots=True)
class WalletOpening:
    """An operator opens a wallet not known from the ledger's balances: AVAILABLE per (reward kind,
    unit, minor) as the ledger holds it with ``last_accrual_id`` its latest entry of the account
    and ``last_mark_id`` its latest wallet mark (None: none). Applied only when the worker's latest
    entry or mark of the account is the one the ledger had (``stream.core.payouts``)."""

    actor: str
    last_accrual_id: str | None
    available: tuple[tuple[str, str, int], ...] = ()
    last_mark_id: str | None = None


@dataclass(frozen=True, slots=True)
class Redemption:
    """A redemption asked through the API (``stream.core.redemptions``): ``amount_minor`` of
    ``reward_kind`` in the event's unit (``billing_currency``), the client's idempotency key, its
    optional reference, and who asked (the token's subject)."""

    reward_kind: str
    amount_minor: int
    key: str
    reference: str = ""
    actor: str = ""


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
    # an instruction's (stream.core.holds) or a payout's (stream.core.payouts); None for a card event
    note: Instruction | PayoutRun | PayoutAnswer | WalletOpening | Redemption | None = None

    @property
    def approved(self) -> bool:
        return self.response_code in APPROVED_RESPONSE_CODES

    @property
    def occurred_at_ms(self) -> int:
        return int(self.occurred_at.timestamp() * 1000)

    def fingerprint(self) -> str:
        """Digest of the content: the same event_id with another fingerprint is a conflict. What is
        digested is the ``repr`` of the tuple of the ``_CARD_FIELDS`` values (and the note, only
        when there is one: a card event's fingerprint is the one its account holds), spelled out
        by ``_card_text`` (the tuple's ``repr`` took twice as long)."""
        note = self.note
        if isinstance(note, Redemption):  # the request, not its time nor who sent it: a retried POST is the same event
            text = repr(
                (self.event_id, self.account_id, self.billing_currency, note.reward_kind, note.amount_minor, note.reference)
            )
        else:
            text = _card_text(self)
            text = f"{text})" if self.note is None else f"{text}, {self.note!r})"
        return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


# The fields a card event's fingerprint is made of, as they were before instructions: the states hold
# fingerprints of events decided by earlier versions, and a redelivery must match them.
_CARD_FIELDS = tuple(name for name in CardEvent.__slots__ if name != "note")
_EVENT_TYPE_TEXT = {event_type: repr(event_type) for event_type in EventType}


def _card_text(e: CardEvent) -> str:
    """``repr`` of the tuple of the event's ``_CARD_FIELDS`` values, but its closing parenthesis."""
    kind = _EVENT_TYPE_TEXT[e.event_type] if type(e.event_type) is EventType else repr(e.event_type)
    return (
        f"({e.event_id!r}, {kind}, {e.occurred_at!r}, {e.account_id!r}, {e.card_token!r}, {e.transaction_ref!r}, "
        f"{e.original_transaction_ref!r}, {e.processing_code!r}, {e.response_code!r}, {e.amount_minor!r}, {e.currency!r}, "
        f"{e.billing_amount_minor!r}, {e.billing_currency!r}, {e.cashback_at_pos_minor!r}, {e.mcc!r}, {e.merchant_id!r}, "
        f"{e.merchant_name!r}, {e.merchant_country!r}, {e.merchant_timezone!r}, {e.channel!r}, {e.clearing_sequence!r}, "
        f"{e.clearing_count!r}"
    )


# _card_text spells the fields out: in this order, and no other.
assert _CARD_FIELDS == (
    *("event_id", "event_type", "occurred_at", "account_id", "card_token", "transaction_ref", "original_transaction_ref"),
    *("processing_code", "response_code", "amount_minor", "currency", "billing_amount_minor", "billing_currency"),
    *("cashback_at_pos_minor", "mcc", "merchant_id", "merchant_name", "merchant_country", "merchant_timezone", "channel"),
    *("clearing_sequence", "clearing_count"),
), "CardEvent's fields changed: spell them out in _card_text, in order"


_REQUIRED_TEXT = ("event_id", "account_id", "card_token", "transaction_ref", "merchant_id")
_AMOUNTS = ("amount_minor", "billing_amount_minor", "cashback_at_pos_minor")
# The largest amount a card network carries: ISO 8583's amount fields (DE4, DE5, DE6) are 12 digits of minor
# units. Anything larger is no purchase, and would let a few messages carry an account's totals past what
# 64 bits hold (the state's encoding, the ledger's bigint balances).
MAX_CARD_AMOUNT_MINOR = 999_999_999_999
AMOUNT_TOO_LARGE = "more than 12 digits of minor units, ISO 8583's amount fields"  # a larger amount's rejection, why
_MCC = re.compile(r"[0-9]{4}")


# The longest text a field of an input message may hold (ids, names, codes), in characters; the people's
# free text of instructions (who, why) has its own bound. The API takes ids of up to 128 characters, and
# ids made of two (a redemption's ``r:<account>:<key>``, a payout's) stay under this. Kept in the
# account's state and in every entry of its event, a field of hundreds of kilobytes made the state's
# changelog record larger than Kafka takes, and the worker wrote it again forever.
TEXT_FIELD_LIMIT = 256
_FREE_TEXT = frozenset({"actor", "reason"})
TEXT_TOO_LONG = f"more than {TEXT_FIELD_LIMIT} characters"  # a longer text's rejection, why


def validate(record: Mapping[str, Any]) -> Rejection | None:
    """The first thing wrong with a decoded card-event record (or instruction), or None. Never looks
    at values in messages it returns: a card number is reported by field name only."""
    rejection = _validate_fields(record)
    if rejection is not None:
        return rejection
    for name, value in record.items():  # after the card numbers: a long field holding one is reported as such
        if isinstance(value, str) and len(value) > TEXT_FIELD_LIMIT and name not in _FREE_TEXT:
            return Rejection(RejectReason.INVALID_FIELD, name, TEXT_TOO_LONG)
    return None


def _validate_fields(record: Mapping[str, Any]) -> Rejection | None:
    """The checks of each kind of record, in their order (``validate`` then bounds every text)."""
    if "instruction" in record:  # the bank's instruction about an account's rewards
        from stream.core import instruction_messages

        return instruction_messages.validate(record)
    if "minimums" in record or "payout_id" in record:  # a payout run, or the bank's answer to a payout
        from stream.core import payout_messages

        return payout_messages.validate(record)
    for name, value in record.items():  # a text shorter than a card number is not looked at (most are)
        if (
            isinstance(value, str)
            and len(value) >= SHORTEST_CARD_NUMBER
            and looks_like_card_number(value, identifier=name in IDENTIFIER_FIELDS)
        ):
            return Rejection(RejectReason.CARD_NUMBER_DETECTED, name)
    for name in _REQUIRED_TEXT:
        if not record.get(name):
            return Rejection(RejectReason.MISSING_FIELD, name)
    for name in _AMOUNTS:
        if record.get(name, 0) < 0:
            return Rejection(RejectReason.NEGATIVE_AMOUNT, name)
        if record.get(name, 0) > MAX_CARD_AMOUNT_MINOR:
            return Rejection(RejectReason.INVALID_FIELD, name, AMOUNT_TOO_LARGE)
    for name in ("currency", "billing_currency"):
        if not is_known_currency(record.get(name, "")):
            return Rejection(RejectReason.UNKNOWN_CURRENCY, name)
    if not _MCC.fullmatch(record.get("mcc", "")):
        return Rejection(RejectReason.INVALID_MCC, "mcc")
    if record.get("cashback_at_pos_minor", 0) > record.get("amount_minor", 0):
        return Rejection(RejectReason.INVALID_FIELD, "cashback_at_pos_minor")
    sequence, count = record.get("clearing_sequence"), record.get("clearing_count")
    if (sequence is None) != (count is None) or (sequence is not None and count is not None and not 1 <= sequence <= count):
        return Rejection(RejectReason.INVALID_FIELD, "clearing_sequence")
    if record["event_type"] in ("REFUND", "CHARGEBACK", "CHARGEBACK_REVERSAL") and not (
        record.get("original_transaction_ref") or record.get("transaction_ref")
    ):
        return Rejection(RejectReason.MISSING_FIELD, "original_transaction_ref")
    return None


def ahead_of_clock(event: CardEvent, now_ms: int, limit_ms: int | None) -> Rejection | None:
    """Why ``event`` may not be applied when dated more than ``limit_ms`` after ``now_ms`` (the
    worker's clock; None: no limit), or None. An event's time becomes its account's clock, by which
    the account forgets its settled transactions and refuses what is older than its horizon: one
    event from a clock years off would put every real event after it beyond the horizon."""
    if limit_ms is None:
        return None
    ahead_ms = event.occurred_at_ms - now_ms
    if ahead_ms <= limit_ms:
        return None
    why = f"{ahead_ms / DAY_MS:,.1f} days ahead of the worker's clock, more than {limit_ms / DAY_MS:g}"
    return Rejection(RejectReason.AHEAD_OF_CLOCK, "occurred_at", why)


# An instruction's free text (who, why) is written by people: bounded, and checked for card numbers.
INSTRUCTION_TEXT_LIMIT = 500


def note_event(event_id: str, kind: EventType, account_id: str, at: datetime, ref: str, currency: str, note: Any) -> CardEvent:
    """An event about an account that is no card event (a payout run, a payout's answer, a wallet's
    opening: ``stream.core.payouts``), carrying its ``note``."""
    return CardEvent(
        event_id=event_id,
        event_type=kind,
        occurred_at=at,
        account_id=account_id,
        card_token="",
        transaction_ref=ref,
        original_transaction_ref=None,
        processing_code="PURCHASE",
        response_code="00",
        amount_minor=0,
        currency=currency,
        billing_amount_minor=0,
        billing_currency=currency,
        cashback_at_pos_minor=0,
        mcc="0000",
        merchant_id="",
        merchant_name="",
        merchant_country="",
        merchant_timezone=None,
        channel="IN_STORE",
        note=note,
    )


def to_event(record: Mapping[str, Any]) -> CardEvent:
    """A validated record as a CardEvent (call ``validate`` first)."""
    if "instruction" in record:
        from stream.core import instruction_messages

        return instruction_messages.to_event(record)
    if "minimums" in record or "payout_id" in record:
        from stream.core import payout_messages

        return payout_messages.to_event(record)
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
