"""The compiled Avro readers (``schemas.readers``) against fastavro, the reference they replace on the hot path.

For every shipped schema, every version: random records of the schema (hypothesis, drawn from the schema itself:
the full ranges of int and long, any text, empty and full arrays and maps, every union branch), written by
fastavro, read back by both: the same record and the same end. Then hostile bytes: every truncation of a
message, one or two changed bytes, random bodies. The compiled reader may be stricter than fastavro (it refuses
what the Avro specification refuses), never looser: whatever it accepts, fastavro decodes to the same record.
"""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import SCHEMA_DIR, Codec, DecodeError, DecodeFailure, Schema
from schemas.readers import Reader, compile_reader
from tests.unit.test_codec import valid_records

SEEDED = settings(max_examples=60, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IDS = {name: schema_id for name, schema_id in json.loads((SCHEMA_DIR / "ids.json").read_text()).items() if name != "_doc"}
CODEC = Codec()
PARSED = {name: fastavro.parse_schema(json.loads((SCHEMA_DIR / name).read_text())) for name in sorted(IDS)}
# Timestamps fastavro itself can write and read back (datetime's own range, to the millisecond).
_TIMES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)).map(
    lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000)
)


def values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Any value of ``schema`` (a parsed schema), as fastavro's writer takes it."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        return st.one_of([values(branch, named) for branch in schema])
    kind = schema if isinstance(schema, str) else schema["type"]
    if isinstance(schema, dict) and schema.get("logicalType") == "timestamp-millis":
        return _TIMES
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "int":
        return st.integers(-(2**31), 2**31 - 1)
    if kind == "long":
        return st.integers(-(2**63), 2**63 - 1)
    if kind == "string":
        return st.text(max_size=40)
    if kind == "bytes":
        return st.binary(max_size=40)
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(values(schema["items"], named), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=10), values(schema["values"], named), max_size=4)
    if kind == "record":
        return st.fixed_dictionaries({field["name"]: values(field["type"], named) for field in schema["fields"]})
    raise AssertionError(f"no strategy for {schema!r}")


def written(parsed: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, record)
    return buffer.getvalue()


def by_fastavro(parsed: dict[str, Any], data: bytes) -> tuple[Any, int] | None:
    """What fastavro reads (the record, where it stopped), or None when it refuses the bytes."""
    stream = io.BytesIO(data)
    try:
        record = fastavro.schemaless_reader(stream, parsed, None)
    except Exception:  # noqa: BLE001 - any refusal
        return None
    return record, stream.tell()


_COMPILED: dict[int, Reader] = {}


def by_compiled(parsed: dict[str, Any], data: bytes) -> tuple[Any, int] | None:
    reader = _COMPILED.get(id(parsed))
    if reader is None:
        reader = _COMPILED[id(parsed)] = compile_reader(parsed)  # type: ignore[assignment]
        assert reader is not None
    try:
        return reader(data, 0)
    except Exception:  # noqa: BLE001 - any refusal
        return None


def never_looser(parsed: dict[str, Any], data: bytes) -> None:
    """What the compiled reader accepts, fastavro reads the same, ending at the same byte."""
    compiled = by_compiled(parsed, data)
    if compiled is not None:
        assert by_fastavro(parsed, data) == compiled


def test_every_shipped_schema_compiles() -> None:
    """Every version of every subject: the shipped schemas use only what the module compiles."""
    assert [name for name, parsed in PARSED.items() if compile_reader(parsed) is None] == []


@pytest.mark.parametrize("name", sorted(IDS))
@SEEDED
@given(data=st.data())
def test_random_records_read_as_fastavro_reads_them(name: str, data: st.DataObject) -> None:
    parsed = PARSED[name]
    message = written(parsed, data.draw(values(parsed, parsed.get("__named_schemas", {}))))
    assert (
        by_compiled(parsed, message)
        == by_fastavro(parsed, message)
        == (fastavro.schemaless_reader(io.BytesIO(message), parsed), len(message))
    )


@pytest.mark.parametrize("subject", sorted(valid_records()))
def test_every_truncation_of_a_valid_message_is_refused(subject: str) -> None:
    message = CODEC.encode(subject, valid_records()[subject])
    for end in range(5, len(message)):
        with pytest.raises(DecodeError) as refused:
            CODEC.decode(message[:end])
        assert refused.value.failure is DecodeFailure.UNDECODABLE


@pytest.mark.parametrize("subject", sorted(valid_records()))
@SEEDED
@given(data=st.data())
def test_changed_bytes_are_read_as_fastavro_reads_them_or_refused(subject: str, data: st.DataObject) -> None:
    parsed = PARSED[next(name for name in IDS if IDS[name] == CODEC.schema_id(subject))]
    body = bytearray(CODEC.encode(subject, valid_records()[subject])[5:])
    for _ in range(data.draw(st.integers(1, 2))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    never_looser(parsed, bytes(body))


@pytest.mark.parametrize("name", sorted(IDS))
@SEEDED
@given(body=st.binary(max_size=200))
def test_random_bodies_are_read_as_fastavro_reads_them_or_refused(name: str, body: bytes) -> None:
    never_looser(PARSED[name], body)


_ONE_OF_EACH = fastavro.parse_schema(
    {
        "type": "record",
        "name": "OneOfEach",
        "fields": [
            {"name": "flag", "type": "boolean"},
            {"name": "small", "type": "int"},
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
            {"name": "maybe", "type": ["null", "string"]},
            {"name": "items", "type": {"type": "array", "items": "long"}},
        ],
    }
)
_VALID = written(_ONE_OF_EACH, {"flag": True, "small": 1, "kind": "B", "maybe": None, "items": []})


@pytest.mark.parametrize(
    ("why", "data"),
    [
        ("a boolean byte of 2", b"\x02" + _VALID[1:]),
        ("an int beyond 32 bits", _VALID[:1] + b"\x80\x80\x80\x80\x10" + _VALID[2:]),
        ("a varint of 11 bytes", _VALID[:1] + b"\xff" * 10 + b"\x01" + _VALID[2:]),
        ("an enum index of -1", _VALID[:2] + b"\x01" + _VALID[3:]),
        ("an enum index past the symbols", _VALID[:2] + b"\x04" + _VALID[3:]),
        ("a union index of 2", _VALID[:3] + b"\x04" + _VALID[4:]),
        ("a negative string length", _VALID[:3] + b"\x02\x01" + _VALID[4:]),
        ("text that is not UTF-8", _VALID[:3] + b"\x02\x02\xff" + _VALID[4:]),
    ],
)
def test_what_the_specification_refuses_is_refused(why: str, data: bytes) -> None:
    assert by_compiled(_ONE_OF_EACH, data) is None, why


def test_a_block_with_a_negative_count_is_followed_by_its_size() -> None:
    """Avro lets a writer give an array block's count negated, then the block's byte size."""
    data = _VALID[:-1] + b"\x03\x04\x02\x04\x00"  # count -2, size 2, items 1 and 2, end
    assert by_compiled(_ONE_OF_EACH, data) == ({"flag": True, "small": 1, "kind": "B", "maybe": None, "items": [1, 2]}, len(data))
    assert by_fastavro(_ONE_OF_EACH, data) == by_compiled(_ONE_OF_EACH, data)


@pytest.mark.parametrize("count", [2**62, 2**31, 10**12])
def test_a_count_the_bytes_cannot_hold_fails_at_once(count: int) -> None:
    zigzag = count << 1
    varint = bytearray()
    while zigzag > 127:
        varint.append(zigzag & 0x7F | 0x80)
        zigzag >>= 7
    varint.append(zigzag)
    started = time.perf_counter()
    assert by_compiled(_ONE_OF_EACH, _VALID[:-1] + bytes(varint) + b"\x02" * 8) is None
    assert time.perf_counter() - started < 0.1


def test_a_timestamp_is_read_to_the_millisecond_in_utc() -> None:
    parsed = fastavro.parse_schema(
        {"type": "record", "name": "At", "fields": [{"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
    )
    moment = datetime(2026, 12, 3, 15, 4, 5, 678_000, tzinfo=UTC)
    record, _ = compile_reader(parsed)(written(parsed, {"at": moment}), 0)  # type: ignore[misc]
    assert record == {"at": moment} and record["at"].tzinfo is UTC
    before_epoch = datetime(1969, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    assert compile_reader(parsed)(written(parsed, {"at": before_epoch}), 0)[0]["at"] == before_epoch  # type: ignore[misc]
    assert before_epoch - timedelta(milliseconds=1) != before_epoch


@pytest.mark.parametrize(
    "field_type",
    [
        "float",
        "double",
        {"type": "fixed", "name": "F", "size": 4},
        {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2},
        {"type": "int", "logicalType": "date"},
        {"type": "array", "items": "null"},
    ],
)
def test_what_is_not_compiled_is_left_to_fastavro(field_type: Any) -> None:
    parsed = fastavro.parse_schema({"type": "record", "name": "R", "fields": [{"name": "x", "type": field_type}]})
    assert compile_reader(parsed) is None


def test_the_codec_reads_the_newest_version_compiled_and_older_ones_by_fastavro(monkeypatch: pytest.MonkeyPatch) -> None:
    """With fastavro's reader out of order, the newest version of a subject still decodes (compiled) and an
    older one no longer does (fastavro resolves it against the newest)."""
    codec = Codec()
    newest = codec.encode("accrual", valid_records()["accrual"])
    expected = codec.decode(newest)
    assert expected == ("accrual", fastavro.schemaless_reader(io.BytesIO(newest[5:]), PARSED["accrual.v8.avsc"]))
    older = Codec({IDS["clock_tick.avsc"]: codec._by_id[IDS["clock_tick.avsc"]]})  # a codec with one schema only
    tick = older.encode("clock_tick", valid_records()["clock_tick"])

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("fastavro's reader was called")

    monkeypatch.setattr(fastavro, "schemaless_reader", broken)
    assert codec.decode(newest) == expected
    assert codec.decode(tick)[0] == "clock_tick"  # the newest clock_tick too
    settlement = json.loads((SCHEMA_DIR / "settlement_event.avsc").read_text())
    older_settlement = {**settlement, "fields": [f for f in settlement["fields"] if f["name"] != "cashback_at_pos_minor"]}
    two = Codec(
        {
            90: Schema("settlement_event", 90, fastavro.parse_schema(older_settlement)),
            91: Schema("settlement_event", 91, fastavro.parse_schema(settlement)),
        }
    )
    old_bytes = Codec({90: two._by_id[90]}).encode(
        "settlement_event", {k: v for k, v in valid_records()["settlement_event"].items() if k != "cashback_at_pos_minor"}
    )
    with pytest.raises(DecodeError):
        two.decode(old_bytes)
    monkeypatch.undo()
    assert two.decode(old_bytes)[1]["cashback_at_pos_minor"] == 0
