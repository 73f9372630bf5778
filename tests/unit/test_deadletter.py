"""Dead letters always fit a Kafka message: what cannot be kept whole is described instead."""

from __future__ import annotations

import hashlib

from schemas.codec import Codec
from stream.deadletter import ORIGINAL_BYTES_LIMIT, OtherReason, Stage, dead_letter

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
