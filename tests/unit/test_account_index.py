"""What the engine derives from an account's transactions (``stream.core.account_index``), what
``stream.core.state_writes.split`` reads of a step and what ``stream.core.state_memory.memory_of``
estimates from the index: always the same as reading every transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core import account_index
from stream.core.account_index import TxnIndex, counts_of, index_of, step_from
from stream.core.events import CardEvent
from stream.core.lifecycle import DAY_MS, due_events, earliest_due_ms, next_due_ms, settled
from stream.core.rules import decide
from stream.core.state import AccountState, Share, Txn
from stream.core.state_memory import memory_of
from stream.core.state_rows import txn_key
from stream.core.state_writes import split
from tests.factories import T0
from tests.unit.test_rules_properties import OFFER_BOOKS, OFFER_NAMES, PROFILE, SEEDED, event_sequences, fillers

T0_MS = int(T0.timestamp() * 1000)
FEWER = settings(SEEDED, max_examples=80)  # each example decides a sequence twice over


def scanned(state: AccountState, event_id: str) -> str | None:
    """The fingerprint of ``event_id`` the transactions keep, read in every one (the first)."""
    return next((txn.events[event_id] for txn in state.txns.values() if event_id in txn.events), None)


def forgotten(txns: dict[str, Txn], before_ms: int) -> dict[str, Txn]:
    """The transactions the horizon keeps, every one read: not settled, or changed since."""
    return {r: t for r, t in txns.items() if not (t.last_ms is not None and t.last_ms < before_ms and settled(t))}


def counted(txns: dict[str, Txn]) -> tuple[int, int]:
    """The event ids and shares the transactions hold, every one read."""
    return sum(len(t.events) for t in txns.values()), sum(len(t.shares) for t in txns.values())


def unindexed(state: AccountState) -> AccountState:
    """The same state without what the engine keeps beside it (as read from the store)."""
    return msgspec.structs.replace(state)


@st.composite
def txns(draw: st.DrawFn) -> Txn:
    """A transaction in any phase: pending, confirmed in its return window, held, spent."""
    shares = [
        Share(
            offer_id=f"o-{n}",
            version=1,
            rounding="down",
            reward_kind="CASH",
            pending_days=30,
            accrue_on="AUTHORIZATION",
            currency="EUR",
            pending=draw(st.sampled_from((0, 0, 50))),
            confirmed=draw(st.sampled_from((0, 0, 70))),
            held=draw(st.sampled_from((0, 0, 0, 10))),
            available_at_ms=draw(st.sampled_from((None, T0_MS + DAY_MS, T0_MS + 40 * DAY_MS))),
        )
        for n in range(draw(st.integers(0, 2)))
    ]
    txn = Txn(
        status=draw(st.sampled_from(("authorized", "clearing", "cleared", "expired"))),
        currency="EUR",
        shares=tuple(shares),
        expires_at_ms=draw(st.sampled_from((None, T0_MS + 30 * DAY_MS))),
        # ids an earlier version may have kept in two transactions, too
        events={f"e-{draw(st.integers(0, 20))}": f"fp-{n}" for n in range(draw(st.integers(0, 3)))},
        last_ms=draw(st.sampled_from((None, T0_MS, T0_MS + 10 * DAY_MS, T0_MS + 90 * DAY_MS))),
    )
    if draw(st.booleans()):  # else UNKNOWN_DUE: stored before it was kept, computed when read
        txn.due_ms = earliest_due_ms(txn)
    return txn


@contextmanager
def ids_from(transactions: int) -> Iterator[None]:
    """``IDS_FROM`` set to ``transactions`` (0: every account keeps the set of its ids)."""
    kept = account_index.IDS_FROM
    account_index.IDS_FROM = transactions
    try:
        yield
    finally:
        account_index.IDS_FROM = kept


BOTH = pytest.mark.parametrize("threshold", [0, account_index.IDS_FROM])


@BOTH
@SEEDED
@given(first=st.dictionaries(st.sampled_from("abcdefgh"), txns(), max_size=8), data=st.data())
def test_the_index_follows_any_step_as_a_full_reading_would(threshold: int, first: dict[str, Txn], data: st.DataObject) -> None:
    with ids_from(threshold):
        follow_steps(first, data)


def follow_steps(first: dict[str, Txn], data: st.DataObject) -> None:
    """Transactions changed, made and forgotten at random: the next due time, the transactions the
    horizon keeps and the event ids' fingerprints are those of reading every transaction. As in the
    engine, a step's transaction keeps the event ids it had (or, made anew, none) and only the
    step's new event id joins one."""
    index, current = TxnIndex(first), first
    for number in range(data.draw(st.integers(1, 6))):
        step = dict(current)
        changed = set(data.draw(st.lists(st.sampled_from("abcdefghij"), max_size=3)))
        for ref in changed:
            step[ref] = data.draw(txns())
            step[ref].events = dict(current[ref].events) if ref in current and data.draw(st.integers(0, 4)) else {}
        home = data.draw(st.sampled_from(sorted(changed))) if changed else None
        event_id = f"new-{number}"
        if home is not None:
            step[home].events = {**step[home].events, event_id: "fp-new"}
        before_ms = T0_MS + data.draw(st.sampled_from((0, 5, 20, 100))) * DAY_MS
        expected = forgotten(step, before_ms)
        expected_gone = tuple(ref for ref in step if ref not in expected)
        every_id = {e for t in step.values() for e in t.events} | {"never-seen"}
        kept, gone = index.advance(
            step, own=data.draw(st.booleans()), changed=changed, event_id=event_id, home=home, before_ms=before_ms
        )
        assert kept == expected and list(kept) == list(expected)
        assert gone == expected_gone
        assert (index.event_count, index.share_count) == counted(kept)
        state = AccountState(txns=kept)
        assert index.next_due_ms() == next_due_ms(state)
        for event_id in every_id:
            assert index.fingerprint(event_id) == scanned(state, event_id)
        current = kept


@BOTH
@FEWER
@given(offers_name=OFFER_NAMES, events=event_sequences(multi_clearing=True), data=st.data())
def test_decisions_with_the_index_are_those_of_a_state_read_anew(
    threshold: int, offers_name: str, events: list[CardEvent], data: st.DataObject
) -> None:
    with ids_from(threshold):
        decide_both_ways(offers_name, events, data)


def decide_both_ways(offers_name: str, events: list[CardEvent], data: st.DataObject) -> None:
    """Every step, the index carried from state to state decides as one built from the state (a
    state read from the store), the state's due time is the full reading's, every event id is
    found as a reading of every transaction finds it, and the horizon (short here) forgets what
    a reading of every transaction forgets; time passes too (expiries, ends of return windows)."""
    offers = OFFER_BOOKS[offers_name]
    horizon = data.draw(st.sampled_from((1, 3, 180)))
    sequence: list[CardEvent] = []
    for index, event in enumerate(events):
        sequence.append(event)
        if data.draw(st.integers(0, 3)) == 0:
            sequence += fillers(data.draw(st.integers(1, 4)), start=100 * index)
    state: AccountState | None = None
    for event in sequence:
        steps = [event]
        if state is not None and data.draw(st.booleans()):  # time passes first
            now = event.occurred_at_ms + data.draw(st.sampled_from((0, 10, 45))) * DAY_MS
            steps = [*due_events(state, "acct-1", now), event]
        for step_event in steps:
            if state is not None and data.draw(st.integers(0, 3)) == 0:
                # decided first on another event, or on this one (a budget grant decides twice): thrown away
                other = data.draw(st.sampled_from([step_event, *sequence]))
                decide(other, offers, state, PROFILE, {}, horizon_days=horizon)
            kept = decide(step_event, offers, state, PROFILE, horizon_days=horizon)
            anew = decide(step_event, offers, None if state is None else unindexed(state), PROFILE, horizon_days=horizon)
            assert (kept.state, kept.entries, kept.outcome, kept.budget_deltas) == (
                anew.state,
                anew.entries,
                anew.outcome,
                anew.budget_deltas,
            )
            new = kept.state
            assert new.due_ms == next_due_ms(new)
            assert new.txns == forgotten(new.txns, (new.clock_ms or 0) - horizon * DAY_MS)
            assert counts_of(new) == counted(new.txns)  # the memory estimate's counts, kept step by step
            assert counts_of(unindexed(new)) is None and memory_of(new) == memory_of(unindexed(new))
            for event_id in {e for t in new.txns.values() for e in t.events} | {step_event.event_id, "never-seen"}:
                assert index_of(new).fingerprint(event_id) == scanned(new, event_id)
            state = new


@FEWER
@given(offers_name=OFFER_NAMES, events=event_sequences(multi_clearing=True), data=st.data())
def test_split_reads_the_step_as_comparing_every_transaction(
    offers_name: str, events: list[CardEvent], data: st.DataObject
) -> None:
    """What ``split`` writes from the step the engine kept is what comparing every transaction and
    recent event of the two states writes."""
    offers = OFFER_BOOKS[offers_name]
    horizon = data.draw(st.sampled_from((1, 180)))
    state: AccountState | None = None
    slots: dict[str, int] | None = None
    for index, event in enumerate(events):
        for each in [event, *fillers(data.draw(st.sampled_from((0, 0, 2, 33))), start=100 * index)]:
            after = decide(each, offers, state, PROFILE, horizon_days=horizon).state
            fast = split("acct-1", state, after, before_in_rows=True, slots=slots)
            if state is not None and after is not state:
                assert step_from(state, after) is not None
            # the same states, without the step: every transaction and recent event compared (a row
            # to rewrite that no state names makes it compare every recent event too)
            full = split(
                "acct-1",
                state,
                after if after is state else unindexed(after),
                before_in_rows=True,
                rewrite=frozenset({txn_key("acct-1", "no-such-ref")}),
                slots=dict(slots or {}),
            )
            assert fast.summary == full.summary and msgspec.msgpack.encode(fast.summary) == msgspec.msgpack.encode(full.summary)
            assert list(fast.rows) == list(full.rows) and fast.rows == full.rows
            assert all(fast.rows[k] is row for k, row in full.rows.items() if isinstance(row, Txn))
            assert (fast.deletes, fast.slots, list(fast.slots)) == (full.deletes, full.slots, list(full.slots))
            state, slots = after, fast.slots


def test_a_state_decided_on_twice_keeps_its_index_and_each_step_apart() -> None:
    """A state decided on again (a budget grant decides twice, a retried event) keeps its index
    (nothing is built again) and gives its first successor's step away: split then compares every
    transaction, and both successors still read right."""
    offers = OFFER_BOOKS["grocery-5"]
    events = fillers(3, start=0)
    state = decide(events[0], offers, None, PROFILE).state
    index = index_of(state)
    first = decide(events[1], offers, state, PROFILE).state
    second = decide(events[1], offers, state, PROFILE).state
    assert index_of(state) is index and first == second
    assert step_from(state, first) is None and step_from(state, second) is not None
    assert index_of(first).fingerprint(events[1].event_id) == scanned(first, events[1].event_id)
    assert index_of(state).fingerprint(events[1].event_id) is None  # taken by the successors' transactions only
    written = split("acct-1", state, first, before_in_rows=True, slots={events[0].event_id: 0})
    assert list(written.rows) == ["acct-1\x1ft\x1ffiller-1", "acct-1\x1fr\x1f1"]
    assert decide(events[2], offers, first, PROFILE).state.txns.keys() == {e.transaction_ref for e in events}
    assert T0 + timedelta(minutes=30) == events[0].occurred_at


def test_ids_of_forgotten_transactions_are_let_go() -> None:
    """Purchases forgotten one after the other (a short horizon): the index lets their ids go once
    they are most of it, and still finds every id, old or new, as a full reading does."""
    with ids_from(0):
        forget_one_after_the_other()


def forget_one_after_the_other() -> None:
    offers = OFFER_BOOKS["grocery-5"]
    events = [event for n in range(400) for event in fillers(1, start=2_000 * n)]  # about 1.4 days apart
    state: AccountState | None = None
    sizes = []
    for event in events:
        state = decide(event, offers, state, PROFILE, horizon_days=2).state
        sizes.append(len(index_of(state).ids or ()))
        assert len(state.txns) <= 3
    assert state is not None and max(sizes) <= 2 * 3 + 256 + 1 and sizes[-1] < max(sizes)
    for event in events[::37]:  # redeliveries of forgotten events: beyond the horizon, as for a state read anew
        again, anew = (
            decide(event, offers, state, PROFILE, horizon_days=2),
            decide(event, offers, unindexed(state), PROFILE, horizon_days=2),
        )
        assert (again.state, again.entries, again.outcome) == (anew.state, anew.entries, anew.outcome)
        assert index_of(state).fingerprint(event.event_id) == scanned(state, event.event_id)
