"""Dead letters always fit a Kafka message (what cannot be kept whole is described instead), and keep
no card number: each is masked where it stands, and hashed with the process's key."""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import Codec, load_shipped_schemas
from stream.core.card_numbers import looks_like_card_number, mask_card_numbers
from stream.deadletter import (
    HASHES_LIMIT,
    ORIGINAL_BYTES_LIMIT,
    RAW_SCAN_LIMIT,
    OtherReason,
    Stage,
    configure_hash_key,
    dead_letter,
    mask_raw,
)
from tests.factories import card_record, card_text_fields
from tests.unit.test_card_number_detector import card_numbers, written
from tests.unit.test_events import grouped, luhn_number

CODEC = Codec()


def _letter(key: bytes | None, value: bytes | None) -> tuple[bytes, dict]:
    encoded = dead_letter(CODEC, Stage.MATCHER, "undecodable", "bad magic byte", "card.authorizations", 3, 41, key, value)
    return encoded, CODEC.decode(encoded, expected_subject="dead_letter")[1]


def test_a_small_message_is_kept_whole_with_its_reason() -> None:
    _, record = _letter(b"acct-1", b"\x07garbage")
    assert (record["key"], record["value"], record["reason"]) == (b"acct-1", b"\x07garbage", "undecodable")
    assert (record["source_topic"], record["source_partition"], record["source_offset"]) == ("card.authorizations", 3, 41)


def test_a_message_near_the_broker_limit_becomes_its_size_and_digest() -> None:
    value = bytes(range(256)) * 4_063  # about 1.04 MB: what the broker takes, a dead letter around it would not fit
    encoded, record = _letter(b"acct-1", value)
    assert len(encoded) < ORIGINAL_BYTES_LIMIT // 100
    assert record["value"] is None and record["key"] == b"acct-1"
    assert record["reason"] == OtherReason.TOO_LARGE.value
    assert record["detail"].startswith("undecodable: bad magic byte")
    assert f"value {len(value)} bytes" in record["detail"]
    assert hashlib.sha256(value).hexdigest() in record["detail"]


def test_a_huge_key_is_dropped_too() -> None:
    _, record = _letter(b"k" * 5_000, b"v" * ORIGINAL_BYTES_LIMIT)
    assert record["key"] is None and record["value"] is None
    assert "key 5000 bytes" in record["detail"]


# --- no card number is kept ------------------------------------------------------------------------
# No card number is written in this file: they are made at run time from random digits.

HASH_KEY = "unit-test-dead-letter-hash-key-0123456789"
TEXT_FIELDS = card_text_fields()  # every text field of both card schemas


@pytest.fixture(autouse=True)
def hash_key() -> Iterator[None]:
    configure_hash_key(HASH_KEY)
    yield
    configure_hash_key(HASH_KEY)


def _hmac(digits: str, key: str = HASH_KEY) -> str:
    return hmac.new(key.encode(), digits.encode(), hashlib.sha256).hexdigest()


def _masked(number: str) -> str:
    return number[:6] + "*" * (len(number) - 10) + number[-4:]


def _dead(value: bytes | None, key: bytes | None = b"acct-1", detail: str = "field x: card_number_detected") -> dict:
    encoded = dead_letter(CODEC, Stage.MATCHER, "card_number_detected", detail, "card.authorizations", 0, 7, key, value)
    return CODEC.decode(encoded, expected_subject="dead_letter")[1]


@pytest.mark.parametrize("subject", ["authorization_event", "settlement_event"])
@pytest.mark.parametrize("field", TEXT_FIELDS)
@pytest.mark.parametrize("separator", ["", " ", "-"])
def test_a_card_number_in_any_text_field_is_masked_in_place(subject: str, field: str, separator: str) -> None:
    number = luhn_number()  # a Visa-range number: a card number in every field, ids included
    written = grouped(number, separator)
    record = card_record("AUTHORIZATION" if subject == "authorization_event" else "CLEARING", **{field: f"ab {written} cd"})
    original = CODEC.encode(subject, record)
    letter = _dead(original)
    masked = letter["value"]
    assert len(masked) == len(original) and masked != original
    assert number.encode() not in masked and written.encode() not in masked
    _, decoded = CODEC.decode(masked, expected_subject=subject)  # still the message, one field masked
    assert decoded[field] == f"ab {grouped(_masked(number), separator)} cd"
    assert {name: value for name, value in decoded.items() if name != field} == {
        name: value for name, value in record.items() if name != field
    }
    assert letter["card_number_hashes"] == [_hmac(number)]


@pytest.mark.parametrize(("length", "shown"), [(13, (3, 4)), (14, (4, 4)), (15, (5, 4)), (16, (6, 4)), (19, (6, 4))])
def test_at_most_the_first_6_and_last_4_digits_stay_and_never_fewer_than_6_are_hidden(
    length: int, shown: tuple[int, int]
) -> None:
    number = luhn_number(length)
    masked = mask_card_numbers(f"x {number} y").text
    first, last = shown
    assert masked == f"x {number[:first]}{'*' * (length - first - last)}{number[-last:]} y"


def test_full_width_digits_are_masked_byte_for_byte() -> None:
    number = luhn_number()
    wide = "".join(chr(0xFF10 + int(digit)) for digit in number)
    record = card_record(merchant_name=f"SHOP {wide}")
    original = CODEC.encode("authorization_event", record)
    letter = _dead(original)
    assert len(letter["value"]) == len(original)
    _, decoded = CODEC.decode(letter["value"])
    assert not looks_like_card_number(decoded["merchant_name"])
    assert decoded["merchant_name"].startswith("SHOP " + wide[:6] + "*" * 18)  # 6 hidden digits of 3 bytes each
    assert letter["card_number_hashes"] == [_hmac(number)]


def test_ids_the_matcher_accepts_stay_readable() -> None:
    """In a decodable message each field is masked by the matcher's own rule: an id holding a
    Luhn-valid date-and-sequence shape (not a card number there) is kept as it is."""
    number = luhn_number()
    dated = "INV-2026-1201-0000-0001"
    assert looks_like_card_number(dated) and not looks_like_card_number(dated, identifier=True)
    record = card_record(event_id=dated, merchant_name=f"SHOP {number}")
    _, decoded = CODEC.decode(_dead(CODEC.encode("authorization_event", record))["value"])
    assert decoded["event_id"] == dated
    assert decoded["merchant_name"] == f"SHOP {_masked(number)}"


@pytest.mark.parametrize(
    "make",
    [
        lambda number: b"\x07garbage " + number.encode() + b" more",  # bad magic byte
        lambda number: struct.pack(">bI", 0, 424_242) + number.encode(),  # unknown schema id
        lambda number: CODEC.encode("authorization_event", card_record(merchant_name=number)) + b"\x00",  # trailing bytes
        lambda number: struct.pack(">bI", 0, 1) + b"\x02" + number.encode() + b"\x36",  # glued to digit bytes around it
        lambda number: b"2" + number.encode() + b"5",
    ],
    ids=["bad-magic", "unknown-schema", "trailing-bytes", "glued-in-avro", "glued"],
)
def test_a_card_number_in_bytes_that_do_not_decode_is_masked_too(make: Any) -> None:
    number = luhn_number()
    original = make(number)
    letter = _dead(original)
    assert len(letter["value"]) == len(original)
    assert number.encode() not in letter["value"] and number[6:-4].encode() not in letter["value"]
    assert not looks_like_card_number(letter["value"].decode("utf-8", "surrogateescape"))
    assert _hmac(number) in letter["card_number_hashes"]


def test_a_long_run_of_digits_in_raw_bytes_is_masked_whole_but_its_ends() -> None:
    digits = "".join(random.Random(3).choice("0123456789") for _ in range(60))
    masked, _ = mask_raw(b"\x07" + digits.encode())
    assert masked == b"\x07" + digits[:6].encode() + b"*" * 50 + digits[-4:].encode()


def test_the_key_and_the_detail_are_masked() -> None:
    number, other = luhn_number(), luhn_number(first="5")
    letter = _dead(b"\x07x", key=f"acct {number}".encode(), detail=f"processing_error: {grouped(other, '-')}")
    assert letter["key"] == f"acct {_masked(number)}".encode()
    assert letter["detail"] == f"processing_error: {grouped(_masked(other), '-')}"
    assert letter["card_number_hashes"] == sorted([_hmac(number), _hmac(other)])


def test_a_too_large_message_keeps_a_masked_key() -> None:
    number = luhn_number()
    letter = _dead(b"v" * ORIGINAL_BYTES_LIMIT, key=number.encode())
    assert letter["value"] is None and letter["key"] == _masked(number).encode()
    assert letter["reason"] == OtherReason.TOO_LARGE.value


def test_the_same_number_has_the_same_hash_in_every_dead_letter_and_another_key_another_hash() -> None:
    number = luhn_number()
    first = _dead(CODEC.encode("authorization_event", card_record(merchant_name=number)))
    second = _dead(b"\x07" + grouped(number, " ").encode())
    assert first["card_number_hashes"] == second["card_number_hashes"] == [_hmac(number)]
    configure_hash_key("another-key-of-at-least-32-characters!!")
    assert _dead(b"\x07" + number.encode())["card_number_hashes"] == [_hmac(number, "another-key-of-at-least-32-characters!!")]


def test_without_a_key_a_random_one_of_the_process_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    number = luhn_number()
    with caplog.at_level(logging.WARNING, logger="stream.deadletter"):
        configure_hash_key(None)
    assert "DEAD_LETTER_HASH_KEY is not set" in caplog.text
    (hashed,) = _dead(b"\x07" + number.encode())["card_number_hashes"]
    assert hashed != _hmac(number) and _dead(b"\x07" + number.encode())["card_number_hashes"] == [hashed]


def test_a_message_without_card_numbers_is_kept_byte_for_byte() -> None:
    original = CODEC.encode("authorization_event", card_record(event_id="INV-2026-1201-0000-0001"))
    letter = _dead(original, key=b"acct-1")
    assert (letter["key"], letter["value"], letter["card_number_hashes"]) == (b"acct-1", original, [])


def test_a_dead_letter_of_version_1_still_reads_with_no_hashes() -> None:
    v1 = Codec(schemas={k: v for k, v in load_shipped_schemas().items() if v.schema_id != CODEC.schema_id("dead_letter")})
    assert v1.schema_id("dead_letter") == 6
    old = v1.encode(
        "dead_letter",
        {
            "source_topic": "t",
            "source_partition": 0,
            "source_offset": 1,
            "key": None,
            "value": b"\x07",
            "reason": "bad_magic_byte",
            "detail": "magic byte 7",
            "failed_at": 0,
            "stage": "matcher",
        },
    )
    _, record = CODEC.decode(old, expected_subject="dead_letter")
    assert record["card_number_hashes"] == [] and record["reason"] == "bad_magic_byte"


# --- properties --------------------------------------------------------------------------------------

SEEDED = settings(max_examples=200, derandomize=True, database=None, deadline=None)


@SEEDED
@given(st.data())
def test_no_written_form_of_a_card_number_survives_masking(data: st.DataObject) -> None:
    number = data.draw(card_numbers(scheme=True))
    text = data.draw(written(number))
    for identifier, glued in ((False, False), (True, False), (False, True)):
        masked = mask_card_numbers(text, identifier=identifier, glued=glued)
        assert number in masked.numbers
        assert len(masked.text.encode()) == len(text.encode())
        assert not looks_like_card_number(masked.text) and not looks_like_card_number(masked.text, identifier=True)


@SEEDED
@given(st.text(alphabet=st.sampled_from("0123456789 -./_x\u00a0\uff11"), max_size=80))
def test_masking_any_digit_text_leaves_no_card_number_and_keeps_the_length(text: str) -> None:
    for glued in (False, True):
        masked = mask_card_numbers(text, glued=glued)
        assert len(masked.text.encode()) == len(text.encode())
        assert not looks_like_card_number(masked.text)
        if not masked.numbers and not glued:
            assert masked.text == text


@SEEDED
@given(st.binary(max_size=300), st.data())
def test_masking_any_bytes_keeps_their_length_and_leaves_no_card_number(noise: bytes, data: st.DataObject) -> None:
    number = data.draw(card_numbers(scheme=False))
    cut = data.draw(st.integers(0, len(noise)))
    original = noise[:cut] + number.encode() + noise[cut:]
    masked, numbers = mask_raw(original)
    assert len(masked) == len(original)
    assert number.encode() not in masked
    assert not looks_like_card_number(masked.decode("utf-8", "surrogateescape"))
    assert mask_raw(noise.replace(b"0", b"x")[:12])[0] == noise.replace(b"0", b"x")[:12]  # under 13 digits: untouched
    assert numbers


def test_bytes_too_long_to_search_have_every_digit_masked() -> None:
    number = luhn_number()
    original = b"\x07" + b"x" * RAW_SCAN_LIMIT + number.encode() + " \uff11\uff12".encode()
    masked, numbers = mask_raw(original)
    assert len(masked) == len(original) and numbers == frozenset()
    assert masked.endswith(b"*" * 16 + b" " + b"*" * 6)


def test_a_dead_letter_carries_at_most_64_hashes() -> None:
    numbers = {luhn_number(rng=random.Random(seed)) for seed in range(100)}
    letter = _dead(b"\x07" + " x ".join(numbers).encode())
    assert len(letter["card_number_hashes"]) == HASHES_LIMIT
    assert letter["detail"].endswith(f"; {len(numbers)} card numbers masked, {HASHES_LIMIT} hashed")
    assert not any(number.encode() in letter["value"] for number in numbers)


def test_the_listing_shows_the_masked_form_only() -> None:
    from stream.deadletter_admin import format_letter

    number = luhn_number()
    letter = _dead(CODEC.encode("authorization_event", card_record(merchant_name=number)))
    line = format_letter(letter)
    assert number not in line and f"[card numbers masked: {_hmac(number)[:12]}]" in line
    old = {**letter, "detail": f"written before masking: {number}", "card_number_hashes": []}  # a version 1 letter
    assert format_letter(old).endswith(f"written before masking: {_masked(number)}")
