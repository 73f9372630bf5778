"""Expiry of unused rewards (``stream.core.expiry``): the offer fields, the lots an account keeps,
time passing through them, the stored state, and the schemas (offer v5, accrual v5)."""

from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import msgspec
import pytest

from schemas.codec import SCHEMA_DIR, Codec
from stream.core.balances import balances
from stream.core.expiry import expires_at
from stream.core.lifecycle import DAY_MS, due_events, next_due_ms
from stream.core.offer_parsing import parse_offer
from stream.core.offer_terms import OfferError
from stream.core.offers import OfferBook
from stream.core.outcomes import Outcome
from stream.core.rules import decide
from stream.core.state import AccountState
from stream.core.state_rows import Summary, assemble, decode_summary, encode
from stream.core.state_writes import split
from tests.factories import T0, card_event, legs, run_decisions

CODEC = Codec()
POINTS = {
    "offer_id": "grocery-points",
    "name": "2 points per euro",
    "reward_kind": "POINTS",
    "points_per_unit": 2,
    "currency": "EUR",
    "mccs": ["5411"],
    "pending_days": 0,
    "available_expiry_days": 30,
    "expiry_notice_days": 7,
}


def points_book(**overrides: Any) -> OfferBook:
    return OfferBook.of([parse_offer({**POINTS, **overrides})])


def clearing_at(at: datetime, ref: str, amount_minor: int = 10_000, **overrides: Any) -> Any:
    return card_event("CLEARING", amount_minor, occurred_at=at, transaction_ref=ref, **overrides)


def tick(state: AccountState, now: datetime, offers: OfferBook) -> tuple[AccountState, list[Any]]:
    """Time passes to ``now``: every due event through ``decide``, as the matcher does on a tick."""
    entries: list[Any] = []
    for event in due_events(state, "acct-1", int(now.timestamp() * 1000)):
        decision = decide(event, offers, state)
        state = decision.state
        entries += decision.entries
    return state, entries


# --- the offer's fields ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        (
            {"reward_kind": "CASH", "points_per_unit": None, "rate_bps": 500, "expiry_notice_days": None},
            "available_expiry_days",
            "not CASH",
        ),
        (
            {
                "reward_kind": "CHARITY",
                "charity_id": "red-cross",
                "points_per_unit": None,
                "rate_bps": 100,
                "expiry_notice_days": None,
            },
            "available_expiry_days",
            "not CHARITY",
        ),
        ({"available_expiry_days": 0, "expiry_notice_days": None}, "available_expiry_days", "below 1"),
        ({"available_expiry_days": 3661, "expiry_notice_days": None}, "available_expiry_days", "above 3660"),
        ({"available_expiry_days": 30.5}, "available_expiry_days", "not a whole number"),
        ({"available_expiry_days": None}, "expiry_notice_days", "requires available_expiry_days"),
        ({"expiry_notice_days": 30}, "expiry_notice_days", "below available_expiry_days"),
        ({"expiry_notice_days": "7"}, "expiry_notice_days", "not a whole number"),
    ],
)
def test_bad_expiry_terms_are_refused_naming_the_field(overrides: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(OfferError) as error:
        parse_offer({**POINTS, **overrides})
    assert error.value.field_name == field and words in str(error.value)


def test_store_credit_expires_and_no_expiry_is_the_default() -> None:
    credit = parse_offer({**POINTS, "reward_kind": "STORE_CREDIT", "points_per_unit": None, "rate_bps": 500})
    assert (credit.available_expiry_days, credit.expiry_notice_days) == (30, 7)
    plain = parse_offer({"offer_id": "o", "rate_bps": 100})
    assert plain.available_expiry_days is None and plain.expiry_notice_days is None


def test_offer_v5_round_trips_and_v4_bytes_decode_without_expiry() -> None:
    offer = parse_offer(POINTS)
    raw = CODEC.encode("offer", offer.to_record())
    assert int.from_bytes(raw[1:5], "big") == 20  # offer.v6.avsc (v5 added the expiry fields)
    assert parse_offer(CODEC.decode(raw, expected_subject="offer")[1]) == offer
    v4 = fastavro.parse_schema(json.loads((SCHEMA_DIR / "offer.v4.avsc").read_text()))
    record = {k: v for k, v in offer.to_record().items() if k not in ("available_expiry_days", "expiry_notice_days")}
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, 17))
    fastavro.schemaless_writer(buffer, v4, record)
    decoded = parse_offer(CODEC.decode(buffer.getvalue(), expected_subject="offer")[1])
    assert decoded.available_expiry_days is None and decoded.expiry_notice_days is None


# --- lots --------------------------------------------------------------------------------------


def test_rewards_of_one_day_share_a_lot_with_its_expiry_and_notice() -> None:
    offers = points_book()
    state, _ = run_decisions(
        [clearing_at(T0, "t1"), clearing_at(T0 + timedelta(hours=5), "t2", 5_000), clearing_at(T0 + timedelta(days=1), "t3")],
        offers,
    )
    assert state is not None
    first, second = state.lots
    expires = int(datetime(2027, 1, 1, tzinfo=UTC).timestamp() * 1000)  # the end of 31 December: Dec 1 + 30 days
    assert (first.amount, first.count, first.ref, first.expires_ms) == (300, 2, "t1", expires)
    assert first.notice_ms == expires - 7 * DAY_MS
    assert (second.amount, second.expires_ms) == (200, expires + DAY_MS)
    # due first at the notice (issue 12 part 3: test_notices.py), then at the expiry
    assert state.due_ms == first.notice_ms == next_due_ms(state)


def test_expiry_is_at_the_end_of_the_utc_day() -> None:
    at = int(datetime(2026, 12, 1, 23, 59, tzinfo=UTC).timestamp() * 1000)
    assert expires_at(at, 1) == int(datetime(2026, 12, 3, tzinfo=UTC).timestamp() * 1000)


def test_cash_and_offers_without_expiry_keep_no_lots() -> None:
    cash = OfferBook.of([parse_offer({"offer_id": "c", "rate_bps": 500, "pending_days": 0})])
    state, _ = run_decisions([clearing_at(T0, "t1")], cash)
    assert state is not None and state.lots == [] and state.due_ms is None


def test_time_passing_expires_a_lot_once_with_a_deterministic_id() -> None:
    offers = points_book()
    state, _ = run_decisions([clearing_at(T0, "t1")], offers)
    assert state is not None
    before, nothing = tick(state, datetime(2026, 12, 31, 23, 59, tzinfo=UTC), offers)
    assert nothing == [] and before.lots
    expired_state, entries = tick(state, datetime(2027, 1, 5, tzinfo=UTC), offers)
    due = int(datetime(2027, 1, 1, tzinfo=UTC).timestamp() * 1000)
    assert legs(entries) == [("AVAILABLE_EXPIRED", "AVAILABLE", "EXPENSE", 200)]
    (entry,) = entries
    assert entry.accrual_id == f"available_expiry:acct-1:t1:{due}#0" and entry.occurred_at == due
    assert entry.offer_id == "grocery-points" and entry.explanation.reason == "expired_unused"
    assert "200 PTS left of 1 reward made available on 2026-12-01" in entry.explanation.detail
    assert expired_state.lots == [] and expired_state.due_ms is None
    assert tick(expired_state, datetime(2027, 2, 1, tzinfo=UTC), offers)[1] == []  # a redelivered tick: nothing
    (event,) = [e for e in due_events(state, "acct-1", due) if e.event_type.value == "AVAILABLE_EXPIRY"]
    again = decide(event, offers, expired_state)  # the same internal event again: its entries, same ids
    assert again.outcome is Outcome.DUPLICATE and again.entries == tuple(entries)


def test_a_lot_outlives_the_transaction_horizon() -> None:
    offers = points_book(available_expiry_days=365, expiry_notice_days=None)
    state, _ = run_decisions([clearing_at(T0, "t1")], offers)
    assert state is not None
    later = clearing_at(T0 + timedelta(days=300), "t2", event_id="later")  # the first purchase is forgotten by now
    state = decide(later, offers, state).state
    assert "t1" not in state.txns and len(state.lots) == 2
    state, entries = tick(state, datetime(2027, 12, 3, tzinfo=UTC), offers)
    assert legs(entries) == [("AVAILABLE_EXPIRED", "AVAILABLE", "EXPENSE", 200)]
    assert [lot.ref for lot in state.lots] == ["t2"]


def test_a_clawback_takes_the_oldest_lot_first_and_never_what_expired() -> None:
    offers = points_book(expiry_notice_days=None)
    state, _ = run_decisions([clearing_at(T0, "t1"), clearing_at(T0 + timedelta(days=2), "t2", 5_000)], offers)
    assert state is not None
    refund = card_event("REFUND", 5_000, occurred_at=T0 + timedelta(days=3), transaction_ref="r2", original_transaction_ref="t2")
    state = decide(refund, offers, state).state
    assert [(lot.ref, lot.amount) for lot in state.lots] == [("t1", 100), ("t2", 100)]
    state, entries = tick(state, datetime(2027, 1, 10, tzinfo=UTC), offers)
    assert [e.amount_minor for e in entries] == [100, 100]
    late = card_event(
        "REFUND", 10_000, occurred_at=datetime(2027, 1, 20, tzinfo=UTC), transaction_ref="r1", original_transaction_ref="t1"
    )
    decision = decide(late, offers, state)
    assert decision.outcome is Outcome.NO_CHANGE and decision.entries == ()


def test_balances_fold_an_expiry_out_of_available() -> None:
    offers = points_book()
    state, decisions = run_decisions([clearing_at(T0, "t1")], offers)
    assert state is not None
    _, expired = tick(state, datetime(2027, 1, 2, tzinfo=UTC), offers)
    totals = balances([e for d in decisions for e in d.entries] + expired)[("acct-1", "POINTS", "PTS")]
    assert (totals["available_minor"], totals["lifetime_earned_minor"], totals["clawed_back_minor"]) == (0, 200, 0)


# --- the stored state and the accruals topic ---------------------------------------------------


def test_lots_are_stored_in_the_summary_and_older_summaries_have_none() -> None:
    offers = points_book()
    state, _ = run_decisions([clearing_at(T0, "t1")], offers)
    assert state is not None
    writes = split("acct-1", None, state, before_in_rows=False)
    stored = decode_summary(encode(writes.summary))
    rows = {key: encode(row) for key, row in writes.rows.items()}
    read = assemble("acct-1", stored, rows.get)
    assert read is not None and read.lots == state.lots and read.due_ms == state.due_ms
    older = msgspec.msgpack.encode({"layout": 3, "due_ms": 5})  # a summary written before lots existed
    summary = decode_summary(older)
    assert isinstance(summary, Summary) and summary.lots == []


def test_accrual_v5_appends_only_the_new_kind() -> None:
    v4 = json.loads((SCHEMA_DIR / "accrual.v4.avsc").read_text())
    v5 = json.loads((SCHEMA_DIR / "accrual.v5.avsc").read_text())
    kinds4, kinds5 = (s["fields"][4]["type"]["symbols"] for s in (v4, v5))
    assert kinds5 == [*kinds4, "AVAILABLE_EXPIRED"]
    v5["fields"][4]["type"]["symbols"] = kinds4
    assert v5["fields"] == v4["fields"]


def test_an_expiry_entry_round_trips_through_accrual_v5() -> None:
    offers = points_book()
    state, _ = run_decisions([clearing_at(T0, "t1")], offers)
    assert state is not None
    _, (entry,) = tick(state, datetime(2027, 1, 2, tzinfo=UTC), offers)
    raw = CODEC.encode("accrual", entry.record())
    assert int.from_bytes(raw[1:5], "big") == 28  # accrual.v8.avsc (v5 added the kind)
    assert CODEC.decode(raw, expected_subject="accrual")[1]["entry_kind"] == "AVAILABLE_EXPIRED"


def test_the_back_test_reports_what_expired_by_offer() -> None:
    from stream.backtest import Replay, report

    replay = Replay(points_book())
    replay.decide(clearing_at(T0, "t1"))
    assert "unused rewards expired" not in report(replay)
    replay.pass_time(datetime(2027, 1, 2, tzinfo=UTC))
    assert "unused rewards expired (first earned first expired; back to the sponsor), by offer:\n  grocery-points" in report(
        replay
    )
    assert "200 PTS" in report(replay).split("unused rewards expired")[1]


def test_a_chargeback_reversal_credited_at_once_opens_a_lot_of_its_own_day() -> None:
    offers = points_book(expiry_notice_days=None)
    chargeback = card_event(
        "CHARGEBACK", 10_000, occurred_at=T0 + timedelta(days=2), transaction_ref="cb", original_transaction_ref="t1"
    )
    reversal = card_event(
        "CHARGEBACK_REVERSAL", 10_000, occurred_at=T0 + timedelta(days=5), transaction_ref="cbr", original_transaction_ref="t1"
    )
    state, decisions = run_decisions([clearing_at(T0, "t1"), chargeback], offers)
    assert state is not None and state.lots == []  # the chargeback took the whole lot
    state, decisions = run_decisions([reversal], offers, state)
    assert state is not None
    (lot,) = state.lots
    assert (lot.ref, lot.amount, lot.expires_ms) == ("t1", 200, expires_at(int((T0 + timedelta(days=5)).timestamp() * 1000), 30))
