"""Hostile bytes for the decoders. ``Codec.decode`` raises only ``DecodeError``, whatever the bytes:
every truncation of every valid message, random bodies behind every shipped schema id (older versions
included), and lengths and counts inside Avro that claim far more than the bytes hold (they fail at
once, without allocating what they claim). And the card-event validation (``validate``, ``to_event``)
never raises on any record the decoder can return: it refuses with a reason naming a field, or the
record becomes a ``CardEvent``.

test_codec.py already covers random bytes, random bodies behind the newest ids and one changed byte.
"""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import SCHEMA_DIR, Codec, DecodeError, DecodeFailure
from stream.core.events import AMOUNT_TOO_LARGE, TEXT_TOO_LONG, CardEvent, Rejection, RejectReason, to_event, validate
from tests.unit.test_codec import valid_records
from topics.catalogue import catalogue

CODEC = Codec()
IDS = {name: schema_id for name, schema_id in json.loads((SCHEMA_DIR / "ids.json").read_text()).items() if name != "_doc"}
SEEDED = settings(max_examples=300, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Lengths and counts no message of ours holds: Avro longs, zigzag-encoded (negative block counts
# are legal Avro: the block's byte size follows).
HUGE = [2**62, 2**63 - 1, -(2**63), 2**31, 2**31 - 1, -(2**31), 10**12, -1, -2]


def varint(value: int) -> bytes:
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        if zigzag:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_or_refuse(data: bytes, expected_subject: str | None = None) -> dict[str, Any] | None:
    """The record, or None for a DecodeError; anything else raised fails the test."""
    try:
        _, record = CODEC.decode(data, expected_subject)
    except DecodeError as error:
        assert isinstance(error.failure, DecodeFailure)
        return None
    assert isinstance(record, dict)
    return record


# --- the codec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", sorted(valid_records()))
def test_every_truncation_of_a_valid_message_is_a_decode_error(subject: str) -> None:
    message = CODEC.encode(subject, valid_records()[subject])
    for cut in range(len(message)):
        with pytest.raises(DecodeError) as refused:
            CODEC.decode(message[:cut])
        assert refused.value.failure is (DecodeFailure.TOO_SHORT if cut < 5 else DecodeFailure.UNDECODABLE)


@SEEDED
@given(st.sampled_from(sorted(IDS.values())), st.binary(max_size=2048))
def test_any_body_behind_any_shipped_id_older_versions_included(schema_id: int, body: bytes) -> None:
    decode_or_refuse(struct.pack(">bI", 0, schema_id) + body)


@SEEDED
@given(st.sampled_from(sorted(valid_records())), st.sampled_from(HUGE), st.data())
def test_a_huge_length_or_count_anywhere_in_a_valid_message_fails_fast(subject: str, huge: int, data: st.DataObject) -> None:
    message = CODEC.encode(subject, valid_records()[subject])
    at = data.draw(st.integers(5, len(message) - 1))
    replaced = data.draw(st.integers(1, min(3, len(message) - at)))
    started = time.perf_counter()
    decode_or_refuse(message[:at] + varint(huge) + message[at + replaced :])
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("huge", HUGE)
@pytest.mark.parametrize(
    ("schema_id", "prefix"),
    [
        (IDS["authorization_event.avsc"], b""),  # the event_id's length
        (IDS["account_profile.avsc"], varint(6) + b"acct-1"),  # the segments array's block count
        (IDS["dead_letter.v2.avsc"], varint(1) + b"t" + varint(0) + varint(0) + b"\x02"),  # the key's byte length
    ],
    ids=["string-length", "array-count", "bytes-length"],
)
def test_a_length_claiming_more_than_the_bytes_hold_allocates_nothing_of_it(schema_id: int, prefix: bytes, huge: int) -> None:
    data = struct.pack(">bI", 0, schema_id) + prefix + varint(huge) + b"abc"
    tracemalloc.start()
    try:
        assert decode_or_refuse(data) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


# --- the card-event validation ----------------------------------------------------------------------

CARD_SUBJECTS = sorted({topic.value_subject for topic in catalogue("x.").inputs()})
# Text likely to reach each check: codes, currencies, MCCs, empty text, digits, card-like groups.
TEXT = st.one_of(
    st.text(max_size=24),
    st.sampled_from(["", "00", "51", "EUR", "JPY", "BHD", "XXX", "eur", "5411", "54A1", "０５４１", "Europe/Paris", "../x"]),
    st.from_regex(r"[0-9]{1,4}( [0-9]{4}){2,4}", fullmatch=True),
    st.text("0123456789", min_size=12, max_size=20),
)
MILLIS = st.one_of(st.integers(-62_135_596_800_000, 253_402_300_799_999), st.integers(-(2**63), 2**63 - 1))


def _raw(schema: Any) -> Any:
    """``schema`` with its logical types dropped: timestamps written as the plain longs they are."""
    if isinstance(schema, dict):
        return {key: _raw(value) for key, value in schema.items() if key != "logicalType"}
    if isinstance(schema, list):
        return [_raw(item) for item in schema]
    return schema


def _values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Any value of an Avro type (logical types as their plain type)."""
    if isinstance(schema, list):
        return st.one_of(*[_values(branch, named) for branch in schema])
    if isinstance(schema, str):
        simple = {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.one_of(st.integers(-5, 100_000), st.integers(-(2**63), 2**63 - 1)),
            "string": TEXT,
            "bytes": st.binary(max_size=16),
        }
        return simple[schema] if schema in simple else named[schema]
    kind = schema["type"]
    if kind == "record":
        fields = {field["name"]: _values(field["type"], named) for field in schema["fields"]}
        named[schema["name"]] = strategy = st.fixed_dictionaries(fields)
        return strategy
    if kind == "enum":
        named[schema["name"]] = strategy = st.sampled_from(schema["symbols"])
        return strategy
    if kind == "array":
        return st.lists(_values(schema["items"], named), max_size=3)
    if kind == "map":
        return st.dictionaries(TEXT, _values(schema["values"], named), max_size=3)
    if kind == "long" and schema.get("logicalType") == "timestamp-millis":
        return MILLIS
    return _values(kind, named)


def _valid_with_random_fields(subject: str, schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid record of ``subject`` (the factories') with up to three fields any value of their type."""
    valid = dict(valid_records()[subject])
    valid.update({name: int(value.timestamp() * 1000) for name, value in valid.items() if hasattr(value, "timestamp")})
    fields = {field["name"]: field["type"] for field in schema["fields"]}

    @st.composite
    def mutated(draw: st.DrawFn) -> dict[str, Any]:
        record = {name: valid.get(name) for name in fields}
        for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)):
            record[name] = draw(_values(fields[name], {}))
        return record

    return mutated()


def _newest_schema_file(subject: str) -> str:
    return max((name for name in IDS if name.split(".", 1)[0] == subject), key=IDS.__getitem__)


@pytest.mark.parametrize("subject", CARD_SUBJECTS)
def test_any_record_the_decoder_returns_is_refused_with_a_reason_or_becomes_an_event(subject: str) -> None:
    file_name = _newest_schema_file(subject)
    schema = json.loads((SCHEMA_DIR / file_name).read_text())
    writer = fastavro.parse_schema(_raw(schema))
    header = struct.pack(">bI", 0, IDS[file_name])
    outcomes: dict[str, int] = {}

    @SEEDED
    @given(st.one_of(_values(schema, {}), _valid_with_random_fields(subject, schema)))
    def refused_or_an_event(raw_record: dict[str, Any]) -> None:
        data = header + fastavro_bytes(writer, raw_record)
        record = decode_or_refuse(data, expected_subject=subject)
        if record is None:  # a timestamp no datetime holds: a DecodeError, dead-lettered as undecodable
            outcomes["undecodable"] = outcomes.get("undecodable", 0) + 1
            return
        rejection = validate(record)
        if rejection is None:
            event = to_event(record)
            assert isinstance(event, CardEvent)
            event.fingerprint()
            assert isinstance(event.occurred_at_ms, int) and isinstance(event.approved, bool)
            outcomes["event"] = outcomes.get("event", 0) + 1
            return
        assert isinstance(rejection, Rejection) and isinstance(rejection.reason, RejectReason)
        assert rejection.field in record or rejection.field in ("original_transaction_ref", "clearing_sequence")
        assert rejection.why in ("", AMOUNT_TOO_LARGE, TEXT_TOO_LONG)  # a fixed text
        assert rejection.detail() == f"field {rejection.field}: {rejection.reason.value}" + (
            f" ({rejection.why})" if rejection.why else ""
        )  # a name, never a value
        outcomes[rejection.reason.value] = outcomes.get(rejection.reason.value, 0) + 1

    refused_or_an_event()
    assert outcomes.get("event", 0) > 0 and len(outcomes) > 3, outcomes  # the strategy reaches past the first check


def fastavro_bytes(writer: Any, record: dict[str, Any]) -> bytes:
    import io

    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, writer, record)
    return buffer.getvalue()
