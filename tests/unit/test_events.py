"""Unit tests of stream.core.events: validation reasons, card-number detection, CardEvent mapping and fingerprint."""

from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timedelta
from typing import Any

import pytest

from stream.core.card_numbers import looks_like_card_number, luhn_valid
from stream.core.events import (
    TEXT_TOO_LONG,
    CardEvent,
    EventType,
    Rejection,
    RejectReason,
    ahead_of_clock,
    to_event,
    validate,
)
from tests.factories import T0, card_event, card_record, generated_card_number

_RANDOM = random.Random(20261201)  # seeded: a failure replays


def luhn_number(length: int = 16, rng: random.Random = _RANDOM, first: str = "4") -> str:
    """A Luhn-valid digit string made at run time (tests.factories), in a card scheme's range by default."""
    return generated_card_number(length, first, rng)


def not_luhn(number: str) -> str:
    """The same digits with a wrong check digit."""
    return number[:-1] + str((int(number[-1]) + 1) % 10)


def grouped(number: str, separator: str) -> str:
    return separator.join(number[i : i + 4] for i in range(0, len(number), 4))


# --- validate ------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", [e.value for e in EventType])
def test_factory_records_are_valid(event_type: str) -> None:
    assert validate(card_record(event_type)) is None


def test_valid_multi_clearing_part() -> None:
    assert validate(card_record("CLEARING", clearing_sequence=2, clearing_count=2)) is None


@pytest.mark.parametrize("field", ["event_id", "account_id", "card_token", "transaction_ref", "merchant_id"])
@pytest.mark.parametrize("missing", ["", None, "absent"])
def test_missing_field(field: str, missing: Any) -> None:
    record = card_record()
    if missing == "absent":
        del record[field]
    else:
        record[field] = missing
    assert validate(record) == Rejection(RejectReason.MISSING_FIELD, field)


@pytest.mark.parametrize("field", ["amount_minor", "billing_amount_minor", "cashback_at_pos_minor"])
def test_negative_amount(field: str) -> None:
    assert validate(card_record(**{field: -1})) == Rejection(RejectReason.NEGATIVE_AMOUNT, field)


@pytest.mark.parametrize("field", ["amount_minor", "billing_amount_minor", "cashback_at_pos_minor"])
def test_an_amount_of_more_than_twelve_digits_is_refused(field: str) -> None:
    largest = {"amount_minor": 999_999_999_999, "billing_amount_minor": 999_999_999_999}
    assert validate(card_record(**{**largest, field: 999_999_999_999})) is None  # ISO 8583's largest amount
    refused = validate(card_record(**{**largest, field: 10**12}))
    assert refused is not None and (refused.reason, refused.field) == (RejectReason.INVALID_FIELD, field)
    assert refused.detail() == f"field {field}: invalid_field (more than 12 digits of minor units, ISO 8583's amount fields)"
    assert validate(card_record(**{field: 2**63 - 1})) == refused


@pytest.mark.parametrize(
    "field", ["event_id", "account_id", "card_token", "transaction_ref", "merchant_id", "merchant_name", "merchant_timezone"]
)
def test_a_text_field_of_more_than_256_characters_is_refused(field: str) -> None:
    assert validate(card_record(**{field: "x" * 256})) is None
    refused = validate(card_record(**{field: "x" * 257}))
    assert refused == Rejection(RejectReason.INVALID_FIELD, field, TEXT_TOO_LONG)
    assert refused.detail() == f"field {field}: invalid_field (more than 256 characters)"


def test_zero_amount_is_allowed() -> None:
    assert validate(card_record(amount_minor=0)) is None


@pytest.mark.parametrize("field", ["currency", "billing_currency"])
@pytest.mark.parametrize("code", ["XXX", "eur", "", "EURO", "XAU"])
def test_unknown_currency(field: str, code: str) -> None:
    assert validate(card_record(**{field: code})) == Rejection(RejectReason.UNKNOWN_CURRENCY, field)


@pytest.mark.parametrize("mcc", ["54A1", "541", "54111", "", " 5411", "5411\n", "54-1"])
def test_invalid_mcc(mcc: str) -> None:
    assert validate(card_record(mcc=mcc)) == Rejection(RejectReason.INVALID_MCC, "mcc")


def test_non_ascii_digits_are_an_invalid_mcc() -> None:
    fullwidth_6011 = "".join(chr(0xFF10 + int(d)) for d in "6011")
    assert validate(card_record(mcc=fullwidth_6011)) == Rejection(RejectReason.INVALID_MCC, "mcc")


def test_cash_back_at_pos_above_amount_is_invalid() -> None:
    record = card_record(amount_minor=5_000, cashback_at_pos_minor=5_001)
    assert validate(record) == Rejection(RejectReason.INVALID_FIELD, "cashback_at_pos_minor")
    assert validate(card_record(amount_minor=5_000, cashback_at_pos_minor=5_000)) is None


@pytest.mark.parametrize(
    ("sequence", "count"),
    [(1, None), (None, 2), (3, 2), (0, 2), (-1, 2), (1, 0)],
)
def test_inconsistent_clearing_sequence_is_invalid(sequence: int | None, count: int | None) -> None:
    record = card_record("CLEARING", clearing_sequence=sequence, clearing_count=count)
    assert validate(record) == Rejection(RejectReason.INVALID_FIELD, "clearing_sequence")


@pytest.mark.parametrize("field", ["merchant_name", "card_token", "merchant_id", "transaction_ref", "event_id"])
@pytest.mark.parametrize("separator", ["", " ", "-", ".", "/", "_"])
def test_card_number_in_any_text_field_is_detected(field: str, separator: str) -> None:
    number = luhn_number()
    record = card_record(**{field: f"paid {grouped(number, separator)} thanks"})
    rejection = validate(record)
    assert rejection == Rejection(RejectReason.CARD_NUMBER_DETECTED, field)
    assert rejection is not None
    detail = rejection.detail()
    assert detail == f"field {field}: card_number_detected"
    digits_in_detail = "".join(c for c in detail if c.isdigit())
    assert digits_in_detail == ""
    assert number not in detail and number[-4:] not in detail


def test_card_number_wins_over_other_problems() -> None:
    record = card_record(event_id="", merchant_name=luhn_number(), amount_minor=-1)
    assert validate(record) == Rejection(RejectReason.CARD_NUMBER_DETECTED, "merchant_name")


def test_sixteen_digits_failing_luhn_are_not_a_card_number() -> None:
    number = not_luhn(luhn_number())
    assert not luhn_valid(number)
    assert not looks_like_card_number(number)
    assert validate(card_record(merchant_name=f"order {number}")) is None


# --- looks_like_card_number ----------------------------------------------------------------------


@pytest.mark.parametrize("length", [13, 15, 16, 19])
def test_luhn_valid_runs_of_13_to_19_digits_are_card_numbers(length: int) -> None:
    assert looks_like_card_number(luhn_number(length))


@pytest.mark.parametrize("length", [8, 12])
def test_short_runs_are_not_card_numbers(length: int) -> None:
    assert not looks_like_card_number(luhn_number(length))


@pytest.mark.parametrize("separator", [" ", "-"])
def test_card_number_with_separators(separator: str) -> None:
    number = luhn_number()
    assert looks_like_card_number(grouped(number, separator))
    assert looks_like_card_number(f"card:{grouped(number, separator)}.")
    assert not looks_like_card_number(grouped(not_luhn(number), separator))


@pytest.mark.parametrize("separator", ["/", ".", "_", "  ", " - ", "\u2013", "\u00a0"])
def test_card_number_with_other_separators(separator: str) -> None:
    assert looks_like_card_number(grouped(luhn_number(), separator))


@pytest.mark.parametrize("separator", [",", ":", "    ", "--", "x"])
def test_other_separators_split_the_run(separator: str) -> None:
    assert not looks_like_card_number(grouped(luhn_number(), separator))


def test_mixed_separators_split_the_run() -> None:
    number = luhn_number()
    assert not looks_like_card_number(f"{number[:4]}-{number[4:8]} {number[8:12]}-{number[12:]}")


def test_full_width_digits_are_digits() -> None:
    number = luhn_number()
    assert looks_like_card_number("".join(chr(0xFF10 + int(d)) for d in number))


def test_more_than_19_digits_in_a_row_are_no_card_number() -> None:
    """No window is slid along a long run: a card is never written glued to other digits, and long
    numeric ids (a 23-digit acquirer reference number) would nearly all hold a Luhn-valid window."""
    number = luhn_number()
    assert not looks_like_card_number(number + "1234567")
    assert looks_like_card_number(number + " 1234567")


@pytest.mark.parametrize(
    "field", ["event_id", "transaction_ref", "original_transaction_ref", "card_token", "account_id", "merchant_id"]
)
def test_an_identifier_holds_a_card_number_only_in_a_card_schemes_range(field: str) -> None:
    outside = luhn_number(first="9")  # 9: national ranges, no bank card scheme of ours
    assert validate(card_record(**{field: f"x-{outside}"})) is None
    in_free_text = validate(card_record(merchant_name=f"x-{outside}"))
    assert in_free_text == Rejection(RejectReason.CARD_NUMBER_DETECTED, "merchant_name")
    inside = luhn_number(first="5")
    assert validate(card_record(**{field: f"x-{inside}"})) == Rejection(RejectReason.CARD_NUMBER_DETECTED, field)


def test_text_without_digits_is_not_a_card_number() -> None:
    assert not looks_like_card_number("")
    assert not looks_like_card_number("Grocer Paris 15e")


def _suffix_breaking_luhn(number: str, before: bool) -> str:
    """Two digits that, read with ``number`` as one run, fail the Luhn check."""
    for pair in (f"{a}{b}" for a in range(1, 10) for b in range(10)):
        run = pair + number if before else number + pair
        if not luhn_valid(run):
            return pair
    raise AssertionError("unreachable")


@pytest.mark.parametrize("before", [False, True], ids=["digits-after", "digits-before"])
def test_card_number_next_to_other_digits_is_detected(before: bool) -> None:
    number = luhn_number()
    pair = _suffix_breaking_luhn(number, before)
    text = f"ref {pair} {number}" if before else f"card {number} {pair} expiry"
    assert looks_like_card_number(text)


# --- to_event and CardEvent ----------------------------------------------------------------------


def test_to_event_maps_every_field() -> None:
    record = card_record(
        "CLEARING",
        5_000,
        billing_amount_minor=4_321,
        billing_currency="USD",
        cashback_at_pos_minor=1_000,
        original_transaction_ref="txn-0",
        clearing_sequence=1,
        clearing_count=3,
        channel="ONLINE",
    )
    event = to_event(record)
    assert event.event_type is EventType.CLEARING
    assert event.occurred_at == T0
    assert event.billing_amount_minor == 4_321 and event.billing_currency == "USD"
    assert (event.clearing_sequence, event.clearing_count) == (1, 3)
    for field in dataclasses.fields(CardEvent):
        if field.name == "note":  # an instruction's (account_instruction), never a card event's
            assert event.note is None
            continue
        expected = record[field.name]
        assert getattr(event, field.name) == expected, field.name


def test_to_event_fills_defaults_of_optional_fields() -> None:
    record = card_record()
    for name in (
        "original_transaction_ref",
        "response_code",
        "cashback_at_pos_minor",
        "merchant_name",
        "merchant_country",
        "merchant_timezone",
    ):
        del record[name]
    event = to_event(record)
    assert event.original_transaction_ref is None
    assert event.response_code == "00" and event.approved
    assert event.cashback_at_pos_minor == 0
    assert (event.merchant_name, event.merchant_country, event.merchant_timezone) == ("", "", None)
    assert (event.clearing_sequence, event.clearing_count) == (None, None)


@pytest.mark.parametrize(
    ("code", "approved"),
    [("00", True), ("08", True), ("10", True), ("11", True), ("05", False), ("51", False), ("", False), ("0", False)],
)
def test_approved_by_response_code(code: str, approved: bool) -> None:
    assert card_event(response_code=code).approved is approved


def test_occurred_at_in_epoch_milliseconds() -> None:
    assert card_event().occurred_at_ms == 1_796_119_200_000
    assert card_event(occurred_at=T0 + timedelta(milliseconds=1)).occurred_at_ms == 1_796_119_200_001


def test_same_content_same_fingerprint() -> None:
    record = card_record("CLEARING", clearing_sequence=1, clearing_count=2)
    first, second = to_event(dict(record)), to_event(dict(record))
    assert first is not second
    assert first.fingerprint() == second.fingerprint()
    assert len(first.fingerprint()) == 24  # 12-byte digest in hex


def _changed(value: Any) -> Any:
    if isinstance(value, EventType):
        return EventType.REFUND if value is not EventType.REFUND else EventType.CLEARING
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, datetime):
        return value + timedelta(milliseconds=1)
    assert value is None
    return "x"


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(CardEvent)])
def test_any_field_change_changes_the_fingerprint(field: str) -> None:
    event = card_event("CLEARING", clearing_sequence=1, clearing_count=2, original_transaction_ref=None)
    value = getattr(event, field)
    changed = _changed(value)
    if value is None and field.startswith("clearing"):
        changed = 1
    other = dataclasses.replace(event, **{field: changed})
    assert other.fingerprint() != event.fingerprint()


@pytest.mark.parametrize("field", ["original_transaction_ref", "merchant_timezone"])
def test_fingerprint_tells_none_from_empty_text(field: str) -> None:
    event = card_event(**{field: None})
    assert dataclasses.replace(event, **{field: ""}).fingerprint() != event.fingerprint()


def test_fingerprint_tells_none_from_the_text_none() -> None:
    event = card_event(original_transaction_ref=None)
    assert dataclasses.replace(event, original_transaction_ref="None").fingerprint() != event.fingerprint()


def test_an_event_dated_further_ahead_of_the_clock_than_the_limit_is_refused_with_how_far() -> None:
    day_ms = 86_400_000
    event = card_event(occurred_at=T0)
    at_ms = event.occurred_at_ms
    assert ahead_of_clock(event, at_ms - 90 * day_ms, 90 * day_ms) is None  # exactly the limit: applied
    assert ahead_of_clock(event, at_ms + 400 * day_ms, 90 * day_ms) is None  # the past is never refused here
    assert ahead_of_clock(event, at_ms - 10_000 * day_ms, None) is None  # no limit
    refused = ahead_of_clock(event, at_ms - 90 * day_ms - 1, 90 * day_ms)
    assert refused is not None
    assert (refused.reason, refused.field) == (RejectReason.AHEAD_OF_CLOCK, "occurred_at")
    assert refused.detail() == "field occurred_at: ahead_of_clock (90.0 days ahead of the worker's clock, more than 90)"
    far = ahead_of_clock(card_event(occurred_at=T0.replace(year=2126)), at_ms, 2 * day_ms)
    assert far is not None and "36,524.0 days ahead of the worker's clock, more than 2)" in far.detail()
