"""Time passing (stream.core.lifecycle): return windows end and authorisations expire by the clock,
deterministically: the ledger does not depend on how often the clock ticks, and a redelivered
tick changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from stream.core.balances import balances
from stream.core.lifecycle import DAY_MS, due_events
from stream.core.rules import Outcome, decide
from tests.factories import book, card_event, offer

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def run(events: list[Any], ticks: list[datetime], offers=None) -> tuple[dict, list[dict], list[Outcome]]:  # type: ignore[no-untyped-def]
    """Deliver card events and clock ticks merged in time order."""
    offers = offers or book(offer(pending_days=30, auth_expiry_days=7))
    steps = sorted([(e.occurred_at, 0, e) for e in events] + [(t, 1, t) for t in ticks], key=lambda s: (s[0], s[1]))
    state, entries, outcomes = None, [], []
    for _, is_tick, item in steps:
        todo = due_events(state, "acct-1", ms(item)) if is_tick else [item]
        for event in todo:
            decision = decide(event, offers, state)
            state, outcomes = decision.state, outcomes + [decision.outcome]
            entries += [e for e in decision.entries if e.accrual_id not in {x.accrual_id for x in entries}]
    return state, entries, outcomes


def purchases() -> list[Any]:
    return [
        card_event("AUTHORIZATION", 10_000, transaction_ref="cleared", occurred_at=T0),
        card_event("CLEARING", 10_000, transaction_ref="cleared", occurred_at=T0 + timedelta(days=2)),
        card_event("AUTHORIZATION", 4_000, transaction_ref="never-cleared", occurred_at=T0 + timedelta(days=1)),
        card_event("CLEARING", 6_000, transaction_ref="force-post", occurred_at=T0 + timedelta(days=10)),
    ]


def test_nothing_is_due_before_its_time_and_due_events_are_deterministic() -> None:
    state, _, _ = run(purchases(), [])
    assert state.due_ms == ms(T0 + timedelta(days=8))  # the uncleared authorisation expires first
    assert due_events(state, "acct-1", state.due_ms - 1) == []
    later = T0 + timedelta(days=45)
    first, again = due_events(state, "acct-1", ms(later)), due_events(state, "acct-1", ms(later))
    assert (
        [e.event_id for e in first]
        == [e.event_id for e in again]
        == [
            f"authorization_expiry:acct-1:never-cleared:{ms(T0 + timedelta(days=8))}",
            f"return_window_ended:acct-1:cleared:{ms(T0 + timedelta(days=32))}",
            f"return_window_ended:acct-1:force-post:{ms(T0 + timedelta(days=40))}",
        ]
    )
    # Each happens at its due time, not at the tick's.
    assert [e.occurred_at for e in first] == [T0 + timedelta(days=8), T0 + timedelta(days=32), T0 + timedelta(days=40)]


def test_the_ledger_does_not_depend_on_how_often_the_clock_ticks() -> None:
    daily = [T0 + timedelta(days=n) for n in range(60)]
    events = purchases()
    _, every_day, _ = run(events, daily)
    _, once, _ = run(events, [T0 + timedelta(days=60)])
    key = lambda e: e.accrual_id  # noqa: E731
    assert sorted(every_day, key=key) == sorted(once, key=key)
    assert balances(once) == {
        ("acct-1", "CASH", "EUR"): {
            "pending_minor": 0,
            "confirmed_minor": 0,
            "available_minor": 800,
            "lifetime_earned_minor": 800,
            "clawed_back_minor": 0,
            "donated_minor": 0,
            "held_minor": 0,
            "paid_out_minor": 0,
            "redeemed_minor": 0,
        }
    }
    kinds = sorted((e.entry_kind, e.transaction_ref, e.amount_minor) for e in once)
    assert ("EXPIRED", "never-cleared", 200) in kinds
    assert ("MADE_AVAILABLE", "cleared", 500) in kinds and ("MADE_AVAILABLE", "force-post", 300) in kinds


def test_a_redelivered_tick_changes_nothing() -> None:
    events = purchases()
    state, entries, _ = run(events, [T0 + timedelta(days=60)])
    for event in due_events(state, "acct-1", ms(T0 + timedelta(days=60))):  # nothing left due
        raise AssertionError(f"{event.event_id} is due again")
    replayed = due_events(run(events, [])[0], "acct-1", ms(T0 + timedelta(days=60)))[0]
    decision = decide(replayed, book(offer(pending_days=30, auth_expiry_days=7)), state)
    assert decision.outcome is Outcome.DUPLICATE and decision.state is state
    assert all(e.accrual_id in {x.accrual_id for x in entries} for e in decision.entries)


def test_an_expiry_gives_budget_back() -> None:
    offers = book(offer(pending_days=30, auth_expiry_days=7, currency="EUR", budget_minor=10_000))
    auth = card_event("AUTHORIZATION", 10_000, transaction_ref="t", occurred_at=T0)
    first = decide(auth, offers, None)
    assert first.budget_deltas == {"grocery-5": 500}
    (expiry,) = due_events(first.state, "acct-1", ms(T0) + 7 * DAY_MS)
    expired = decide(expiry, offers, first.state)
    assert expired.outcome is Outcome.EXPIRED and expired.budget_deltas == {"grocery-5": -500}
    assert expired.state.due_ms is None
