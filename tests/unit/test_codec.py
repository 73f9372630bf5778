"""Unit tests of schemas.codec: Confluent wire format, round trips, typed decode failures, schema evolution."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import SCHEMA_DIR, Codec, DecodeError, DecodeFailure, Schema, load_shipped_schemas
from stream.core.rules import decide
from tests.factories import T0, book, card_event, card_record, offer

SEEDED = settings(max_examples=200, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHIPPED_IDS = {
    "authorization_event": 1,
    "settlement_event": 2,
    # offer.v6.avsc; offer.avsc (3), .v2 (7), .v3 (11), .v4 (17) and .v5 (19) keep theirs (test_offers_v2.py reads their bytes)
    "offer": 20,
    "offer_activation": 4,
    "accrual": 28,  # accrual.v8.avsc; accrual.avsc (5), .v2 (10), .v3 (14), .v4 (16), .v5 (18), .v6 (21), .v7 (24) still decode
    "dead_letter": 13,  # dead_letter.v2.avsc; dead_letter.avsc (6) still decodes (test_deadletter.py)
    "account_profile": 23,  # account_profile.v2.avsc (language); account_profile.avsc (8) still decodes
    "clock_tick": 9,
    "account_erasure": 12,
    "account_instruction": 29,  # account_instruction.v2.avsc (REDEEM); account_instruction.avsc (15) still decodes
    "notification": 22,
    "payout_run": 32,  # payout_run.v2.avsc (wallet_opening.last_mark_id); payout_run.avsc (25) still decodes
    "payout_instruction": 26,
    "payout_result": 27,
    "donation_instruction": 30,
    "donation_result": 31,
}


_CODEC = Codec()


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def _accrual_record() -> dict[str, Any]:
    decision = decide(card_event("AUTHORIZATION", 10_000), book(), None)
    return decision.entries[0].record()


def valid_records() -> dict[str, dict[str, Any]]:
    """One valid record per shipped subject, every optional field set so the round trip checks it."""
    return {
        "authorization_event": card_record("AUTHORIZATION", 12_345, original_transaction_ref="txn-0", cashback_at_pos_minor=45),
        "settlement_event": card_record("CLEARING", 6_000, clearing_sequence=1, clearing_count=2),
        "offer": offer(valid_from="2026-11-01", valid_to="2027-01-01", max_reward_per_txn_minor=2_000).to_record(),
        "offer_activation": {"account_id": "acct-1", "offer_id": "grocery-5", "active": False, "changed_at": T0},
        "accrual": _accrual_record(),
        "dead_letter": {
            "source_topic": "cashback.card.authorizations",
            "source_partition": 3,
            "source_offset": 2**40,
            "key": b"acct-1",
            "value": b"\x01\x02\xff",
            "reason": "bad_magic_byte",
            "detail": "magic byte 1",
            "failed_at": T0,
            "stage": "matcher",
            "card_number_hashes": ["0f" * 32],
        },
        "account_profile": {"account_id": "acct-1", "segments": ["new", "vip"], "updated_at": T0, "language": "fr"},
        "notification": {
            "notification_id": "available_expiry:acct-1:t1:1#0",
            "account_id": "acct-1",
            "kind": "EXPIRING",
            "amount_minor": 200,
            "currency": "PTS",
            "reward_kind": "POINTS",
            "offer_id": "grocery-points",
            "merchant_id": None,
            "occurred_at": T0,
            "language": "fr",
            "line": "Il vous reste 200 points à utiliser au plus tard le 14 janvier 2027.",
            "expires_at": T0,
        },
        "clock_tick": {"partition": 3, "now": T0},
        "account_erasure": {"account_id": "acct-1", "requested_at": T0},
        "account_instruction": {
            "event_id": "release:1",
            "instruction": "RELEASE_HOLD",
            "occurred_at": T0,
            "account_id": "acct-1",
            "transaction_ref": "txn-1",
            "offer_id": None,
            "merchant_id": None,
            "until": None,
            "currency": "EUR",
            "actor": "ops-1",
            "reason": "customer called, receipts checked",
            "reward_kind": None,
            "amount_minor": None,
            "reference": None,
        },
        "payout_run": {
            "run_id": "2026-12-03T0200Z",
            "account_id": "acct-1",
            "requested_at": T0,
            "minimums": [{"currency": "EUR", "minimum_minor": 1_000}, {"currency": "USD", "minimum_minor": 1_500}],
            "default_minimum_minor": 2_000,
            "wallet_opening": {
                "actor": "ops-1",
                "last_accrual_id": "evt-9#1",
                "available": [{"reward_kind": "CASH", "unit": "EUR", "amount_minor": 2_500}],
                "last_mark_id": "open-wallet:open-1:acct-1#0",
            },
        },
        "payout_instruction": {
            "payout_id": "p:2026-12-03T0200Z:acct-1:EUR",
            "account_id": "acct-1",
            "amount_minor": 2_500,
            "currency": "EUR",
            "run_id": "2026-12-03T0200Z",
            "requested_at": T0,
        },
        "payout_result": {
            "payout_id": "p:2026-12-03T0200Z:acct-1:EUR",
            "account_id": "acct-1",
            "status": "REJECTED",
            "reason_code": "account_closed",
            "answered_at": T0,
        },
        "donation_instruction": {
            "payout_id": "d:2026-12-03T0200Z:red-cross:EUR",
            "charity_id": "red-cross",
            "amount_minor": 12_345,
            "currency": "EUR",
            "run_id": "2026-12-03T0200Z",
            "requested_at": T0,
        },
        "donation_result": {
            "payout_id": "d:2026-12-03T0200Z:red-cross:EUR",
            "charity_id": "red-cross",
            "status": "CONFIRMED",
            "reason_code": None,
            "answered_at": T0,
        },
    }


def _ms_to_datetime(value: Any) -> Any:
    return datetime.fromtimestamp(value / 1000, tz=UTC) if isinstance(value, int) else value


def test_every_shipped_subject_has_a_valid_record_here(codec: Codec) -> None:
    assert set(valid_records()) == set(SHIPPED_IDS)


@pytest.mark.parametrize("subject", sorted(SHIPPED_IDS))
def test_round_trip_of_every_subject(codec: Codec, subject: str) -> None:
    record = valid_records()[subject]
    data = codec.encode(subject, record)
    decoded_subject, decoded = codec.decode(data, expected_subject=subject)
    assert decoded_subject == subject
    expected = dict(record)
    if subject == "accrual":  # entries carry epoch milliseconds; Avro's timestamp-millis decodes to a datetime
        expected["occurred_at"] = _ms_to_datetime(expected["occurred_at"])
    assert decoded == expected


@pytest.mark.parametrize("subject", sorted(SHIPPED_IDS))
def test_header_is_magic_zero_then_big_endian_schema_id(codec: Codec, subject: str) -> None:
    data = codec.encode(subject, valid_records()[subject])
    assert data[0] == 0
    assert data[1:5] == SHIPPED_IDS[subject].to_bytes(4, "big")
    assert codec.schema_id(subject) == SHIPPED_IDS[subject]


def test_header_bytes_exactly(codec: Codec) -> None:
    data = codec.encode("settlement_event", valid_records()["settlement_event"])
    assert data[:5] == b"\x00\x00\x00\x00\x02"


def test_shipped_ids_come_from_ids_json() -> None:
    ids = json.loads((SCHEMA_DIR / "ids.json").read_text())
    shipped = load_shipped_schemas()
    assert {s.subject: s.schema_id for s in shipped.values()} == SHIPPED_IDS
    assert {name for name in ids if name.endswith(".avsc")} == {p.name for p in SCHEMA_DIR.glob("*.avsc")}


# --- decode failures ----------------------------------------------------------------------------


def _failure(codec: Codec, data: bytes | None, expected_subject: str | None = None) -> DecodeFailure:
    with pytest.raises(DecodeError) as caught:
        codec.decode(data, expected_subject)
    assert str(caught.value).startswith(caught.value.failure.value + ": ")
    return caught.value.failure


@pytest.mark.parametrize("data", [None, b"", b"\x00", b"\x00\x00\x00\x00"])
def test_too_short(codec: Codec, data: bytes | None) -> None:
    assert _failure(codec, data) is DecodeFailure.TOO_SHORT


@pytest.mark.parametrize("magic", [1, 0x7F, 0x80, 0xFF])
def test_bad_magic_byte(codec: Codec, magic: int) -> None:
    data = bytearray(codec.encode("authorization_event", valid_records()["authorization_event"]))
    data[0] = magic
    assert _failure(codec, bytes(data)) is DecodeFailure.BAD_MAGIC_BYTE


@pytest.mark.parametrize("schema_id", [0, 999, 65_535, 2**32 - 1])
def test_unknown_schema_id(codec: Codec, schema_id: int) -> None:
    body = codec.encode("authorization_event", valid_records()["authorization_event"])[5:]
    assert _failure(codec, struct.pack(">bI", 0, schema_id) + body) is DecodeFailure.UNKNOWN_SCHEMA_ID


def test_wrong_subject(codec: Codec) -> None:
    data = codec.encode("authorization_event", valid_records()["authorization_event"])
    assert _failure(codec, data, expected_subject="settlement_event") is DecodeFailure.WRONG_SCHEMA
    assert codec.decode(data)[0] == "authorization_event"  # without an expectation it decodes


@pytest.mark.parametrize("subject", sorted(SHIPPED_IDS))
def test_truncated_body(codec: Codec, subject: str) -> None:
    data = codec.encode(subject, valid_records()[subject])
    assert _failure(codec, data[:-1]) is DecodeFailure.UNDECODABLE
    assert _failure(codec, data[:5]) is DecodeFailure.UNDECODABLE  # header only


@pytest.mark.parametrize("garbage", [b"\x00", b"\x01\x02\x03"])
def test_trailing_garbage(codec: Codec, garbage: bytes) -> None:
    data = codec.encode("settlement_event", valid_records()["settlement_event"])
    assert _failure(codec, data + garbage) is DecodeFailure.UNDECODABLE


@SEEDED
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    _decode_never_raises_anything_else(data)


@SEEDED
@given(st.sampled_from(sorted(SHIPPED_IDS.values())), st.binary(max_size=300))
def test_any_body_behind_a_valid_header_decodes_or_raises_decode_error(schema_id: int, body: bytes) -> None:
    _decode_never_raises_anything_else(struct.pack(">bI", 0, schema_id) + body)


@SEEDED
@given(st.sampled_from(sorted(SHIPPED_IDS)), st.data())
def test_corrupted_valid_message_decodes_or_raises_decode_error(subject: str, data: st.DataObject) -> None:
    message = bytearray(_CODEC.encode(subject, valid_records()[subject]))
    index = data.draw(st.integers(5, len(message) - 1))
    message[index] = data.draw(st.integers(0, 255))
    _decode_never_raises_anything_else(bytes(message))


def _decode_never_raises_anything_else(data: bytes) -> None:
    try:
        subject, record = _CODEC.decode(data)
    except DecodeError as exc:
        assert isinstance(exc.failure, DecodeFailure)
        return
    assert subject in SHIPPED_IDS
    assert isinstance(record, dict)


# --- schema evolution ---------------------------------------------------------------------------

_DROPPED = {"clearing_sequence", "clearing_count", "response_code", "cashback_at_pos_minor"}


def _settlement_schemas() -> tuple[Schema, Schema]:
    """(older, current) settlement_event schemas: the older one lacks fields added with defaults since."""
    current_json = json.loads((SCHEMA_DIR / "settlement_event.avsc").read_text())
    older_json = {**current_json, "fields": [f for f in current_json["fields"] if f["name"] not in _DROPPED]}
    older = Schema("settlement_event", 10, fastavro.parse_schema(older_json))
    current = Schema("settlement_event", 11, fastavro.parse_schema(current_json))
    return older, current


def test_bytes_written_with_an_older_schema_decode_with_defaults() -> None:
    older, current = _settlement_schemas()
    old_record = {k: v for k, v in card_record("CLEARING", 4_000).items() if k not in _DROPPED}
    old_bytes = Codec(schemas={10: older}).encode("settlement_event", old_record)
    assert old_bytes[:5] == b"\x00\x00\x00\x00\x0a"

    reader = Codec(schemas={10: older, 11: current})
    subject, record = reader.decode(old_bytes, expected_subject="settlement_event")

    assert subject == "settlement_event"
    assert record == {
        **old_record,
        "clearing_sequence": None,
        "clearing_count": None,
        "response_code": "00",
        "cashback_at_pos_minor": 0,
    }


def test_encode_uses_the_newest_schema_of_a_subject() -> None:
    older, current = _settlement_schemas()
    codec = Codec(schemas={10: older, 11: current})
    data = codec.encode("settlement_event", card_record("CLEARING", 4_000, clearing_sequence=2, clearing_count=2))
    assert data[:5] == b"\x00\x00\x00\x00\x0b"
    assert codec.decode(data)[1]["clearing_sequence"] == 2


# --- money is never a float ---------------------------------------------------------------------


def _types(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _types(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in ("type", "items", "values", "fields"):
                yield from _types(value)
            elif key == "default" or key == "doc":
                continue
            elif isinstance(value, (dict, list)):
                yield from _types(value)


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.avsc")), ids=lambda p: p.name)
def test_no_float_or_double_in_any_schema(path: Path) -> None:
    schema = json.loads(path.read_text())
    types = set(_types(schema))
    assert "long" in types or "int" in types  # the walk does reach the field types
    assert not types & {"float", "double"}
    # and nowhere in the text either, not even in a nested type the walk could miss
    assert '"float"' not in path.read_text() and '"double"' not in path.read_text()


def test_a_wallet_opening_written_with_payout_run_version_1_decodes_without_a_mark(codec: Codec) -> None:
    """Openings already on the payout-runs topic when the workers are upgraded still decode: no mark named."""
    record = valid_records()["payout_run"]
    opening = {k: v for k, v in record["wallet_opening"].items() if k != "last_mark_id"}
    older = fastavro.parse_schema(json.loads((SCHEMA_DIR / "payout_run.avsc").read_text()))
    body = Codec(schemas={25: Schema("payout_run", 25, older)}).encode("payout_run", {**record, "wallet_opening": opening})
    assert body[1:5] == struct.pack(">I", 25)
    subject, decoded = codec.decode(body)
    assert subject == "payout_run" and decoded["wallet_opening"] == {**opening, "last_mark_id": None}
