"""The compiled Avro writers (``schemas.writers``) against fastavro's writer.

For every shipped schema, every version: random records of the schema (the strategy of
tests/unit/test_readers.py) give the same bytes. And whatever a record holds (a field missing, a value of
another type, a naive datetime, a number out of range), ``Codec.encode`` does what fastavro does: the same
bytes, or the same exception, since the compiled writer hands fastavro every value it does not take.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import Codec, Schema
from schemas.writers import compile_writer
from stream.localstack.bench_baselines import accrual_of
from stream.localstack.bench_streams import bench_log
from tests.unit.test_codec import valid_records
from tests.unit.test_readers import IDS, PARSED, SEEDED, values, written

FEWER = settings(SEEDED, max_examples=40)  # each example draws a whole record of the schema

_SUBJECTS = {name: Codec()._by_id[schema_id].subject for name, schema_id in IDS.items()}


def codec_of(name: str) -> Codec:
    """A codec whose only schema is ``name`` (so that it is the newest of its subject)."""
    return Codec({IDS[name]: Schema(_SUBJECTS[name], IDS[name], PARSED[name])})


_CODECS = {name: codec_of(name) for name in IDS}


def by_codec(name: str, record: Any) -> tuple[str, Any]:
    try:
        return "written", _CODECS[name].encode(_SUBJECTS[name], record)[5:]
    except Exception as error:  # noqa: BLE001 - the refusal is compared
        return "refused", type(error)


def by_fastavro(name: str, record: Any) -> tuple[str, Any]:
    try:
        return "written", written(PARSED[name], record)
    except Exception as error:  # noqa: BLE001 - the refusal is compared
        return "refused", type(error)


def test_every_shipped_schema_compiles() -> None:
    assert [name for name, parsed in PARSED.items() if compile_writer(parsed) is None] == []


@pytest.mark.parametrize("name", sorted(IDS))
@FEWER
@given(data=st.data())
def test_random_records_are_written_as_fastavro_writes_them(name: str, data: st.DataObject) -> None:
    parsed = PARSED[name]
    record = data.draw(values(parsed, parsed.get("__named_schemas", {})))
    writer = compile_writer(parsed)
    assert writer is not None
    out = bytearray()
    writer(out, record)
    assert bytes(out) == written(parsed, record)
    assert by_codec(name, record) == ("written", bytes(out))


# Values of other types than a field's, and values at the edges of the types.
_ODD = [
    None,
    True,
    False,
    0,
    -1,
    2**31,
    -(2**31) - 1,
    2**63,
    -(2**63) - 1,
    1.5,
    "",
    "\ud800",  # a lone surrogate: no UTF-8 for it
    b"x",
    [],
    [1, "a"],
    (1,),
    {},
    {"a": 1},
    datetime(2026, 12, 3, 12, 0, 0, 123_456),  # naive
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    "PENDING_CREATED",
    "NOT_A_SYMBOL",
]


@pytest.mark.parametrize("name", sorted(IDS))
@FEWER
@given(data=st.data())
def test_whatever_a_record_holds_the_codec_does_what_fastavro_does(name: str, data: st.DataObject) -> None:
    parsed = PARSED[name]
    record = dict(data.draw(values(parsed, parsed.get("__named_schemas", {}))))
    for field in data.draw(st.lists(st.sampled_from([f["name"] for f in parsed["fields"]]), min_size=1, max_size=3)):
        if data.draw(st.booleans()):
            record.pop(field, None)  # left to its default, when it has one
        else:
            record[field] = data.draw(st.sampled_from(_ODD))
    assert by_codec(name, record) == by_fastavro(name, record)


def test_the_shipped_records_are_written_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The records the project writes take the compiled path: with fastavro's writer out of order, every
    subject's valid record is still written, and reads back the same."""
    codec, records = Codec(), valid_records()
    expected = {subject: codec.encode(subject, record) for subject, record in records.items()}

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("fastavro's writer was called")

    monkeypatch.setattr(fastavro, "schemaless_writer", broken)
    for subject, record in records.items():
        assert codec.encode(subject, record) == expected[subject]
        assert codec.decode(expected[subject])[1] == fastavro.schemaless_reader(
            io.BytesIO(expected[subject][5:]), codec._latest[subject].parsed
        )


def test_the_benchmarks_raw_loop_writes_its_accruals_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's plain-client baseline encodes a complete accrual: were a field missing, every
    record would go down fastavro's slower path and the baseline would understate a plain client."""
    codec = Codec()
    log = bench_log(1, 50, 0, codec)
    subjects = {"authorizations": "authorization_event", "settlements": "settlement_event"}
    events = [codec.decode(v, expected_subject=subjects[r])[1] for r, _, v, _ in log.preloaded if r in subjects]
    expected = [codec.encode("accrual", accrual_of(event)) for event in events]

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("fastavro's writer was called")

    monkeypatch.setattr(fastavro, "schemaless_writer", broken)
    assert len(events) >= 50
    assert [codec.encode("accrual", accrual_of(event)) for event in events] == expected


def test_a_timestamp_given_in_milliseconds_or_naive_is_written_as_fastavro_writes_it() -> None:
    """An int for a timestamp (the engine's entries hold their times so: compiled) and a naive datetime (fastavro
    takes it for local time: left to fastavro): fastavro's bytes."""
    codec = Codec()
    record = dict(valid_records()["clock_tick"], now=1_767_225_600_123)
    assert codec.encode("clock_tick", record)[5:] == written(codec._latest["clock_tick"].parsed, record)
    naive = dict(record, now=datetime(2026, 1, 1, 12, 0))
    assert codec.encode("clock_tick", naive)[5:] == written(codec._latest["clock_tick"].parsed, naive)
