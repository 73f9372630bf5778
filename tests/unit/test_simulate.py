"""The simulator's stream is seeded (the same seed, the same stream), covers the lifecycle shapes
the issue names, is valid except for the bad messages it means to send, and keeps each
account's events in time order."""

from __future__ import annotations

from collections import Counter

from schemas.codec import Codec, DecodeError
from stream.events import looks_like_card_number, validate
from stream.simulate import SHAPES, Scenario, generate

CODEC = Codec()


def _stream(seed: int, purchases: int = 2_000, bad_ratio: float = 0.01):  # type: ignore[no-untyped-def]
    return list(generate(Scenario(seed=seed, purchases=purchases, bad_ratio=bad_ratio), CODEC))


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    def digest(messages):  # type: ignore[no-untyped-def]
        return [(m.role, m.key, m.raw if m.raw is not None else tuple(sorted(map(str, m.record.items())))) for m in messages]

    first, again, other = _stream(4, 300), _stream(4, 300), _stream(5, 300)
    assert digest(first) == digest(again)
    assert digest(first) != digest(other)


def test_the_stream_covers_every_shape_and_event_type() -> None:
    messages = _stream(1)
    records = [m.record for m in messages if m.record is not None]
    types = Counter(r["event_type"] for r in records)
    assert set(types) == {
        "AUTHORIZATION", "INCREMENTAL_AUTHORIZATION", "AUTHORIZATION_REVERSAL", "CLEARING", "REFUND",
        "CHARGEBACK", "CHARGEBACK_REVERSAL",
    }
    assert any(r["response_code"] != "00" for r in records)  # declines
    assert any(r.get("clearing_count") == 2 for r in records)  # multi-clearing
    assert any(r["cashback_at_pos_minor"] > 0 for r in records)  # cash at the till
    assert any(r["processing_code"] in ("QUASI_CASH", "CASH_WITHDRAWAL") for r in records)
    ids = Counter(r["event_id"] for r in records)
    assert 0 < sum(1 for count in ids.values() if count > 1) < len(ids) * 0.05  # a few duplicates
    assert {name for name, _ in SHAPES} >= {"partial_clearing", "force_post", "clearing_first", "refund"}


def test_good_messages_are_valid_and_bad_ones_are_not() -> None:
    messages = _stream(2)
    bad = [m for m in messages if m.bad is not None]
    assert len(bad) >= 10 and {m.bad for m in bad} >= {"undecodable", "unknown_schema_id", "invalid_mcc", "card_number"}
    for message in messages:
        if message.bad is None:
            assert message.record is not None and validate(message.record) is None
            assert message.key == message.record["account_id"].encode()
            continue
        try:
            _, record = CODEC.decode(message.raw)
        except DecodeError:
            continue
        assert validate(record) is not None, message.bad
    for message in messages:
        if message.record is not None:
            assert not any(looks_like_card_number(v) for v in message.record.values() if isinstance(v, str))


def test_each_purchase_unfolds_in_time_order() -> None:
    by_ref: dict[str, list] = {}
    for message in _stream(3, bad_ratio=0):
        by_ref.setdefault(message.record["transaction_ref"], []).append(message.record["occurred_at"])
    # Publication order is time order within a purchase (a "clearing_first" purchase's late
    # authorisation also happens later).
    assert all(times == sorted(times) for times in by_ref.values())
