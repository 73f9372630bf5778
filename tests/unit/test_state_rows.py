"""The stored layout of an account's state (``stream.core.state_rows``): a summary and rows, written
step by step as the worker writes them, read back as the very state the engine returned, even
when a crash cuts a step after its summary."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.events import CardEvent
from stream.core.memory import RECENT_EVENTS_LIMIT
from stream.core.rules import decide
from stream.core.state_rows import (
    MissingRow,
    Writes,
    assemble,
    carried,
    in_rows,
    is_summary_key,
    recent_key,
    slots_of,
    split,
    txn_key,
)
from tests.unit.test_rules_properties import OFFER_BOOKS, OFFER_NAMES, PROFILE, SEEDED, event_sequences, fillers

ACCOUNT = "acct-1"


def as_stored(value: Any) -> Any:
    """What the table gives back: its values are JSON."""
    return json.loads(json.dumps(value))


def write(store: dict[str, Any], writes: Writes, rows: bool = True) -> None:
    store[ACCOUNT] = as_stored(writes.summary)
    if rows:
        store.update({key: as_stored(value) for key, value in writes.rows.items()})
        for key in writes.deletes:
            store.pop(key, None)  # a row a cut step never wrote may be gone by now


@SEEDED
@given(offers_name=OFFER_NAMES, events=event_sequences(multi_clearing=True), data=st.data())
def test_every_step_reads_back_as_the_engine_state(offers_name: str, events: list[CardEvent], data: st.DataObject) -> None:
    offers = OFFER_BOOKS[offers_name]
    sequence: list[CardEvent] = []
    for index, event in enumerate(events):
        sequence.append(event)
        if data.draw(st.integers(0, 4)) == 0:  # enough purchases to push events out of the recent ones
            sequence += fillers(data.draw(st.sampled_from((3, RECENT_EVENTS_LIMIT + 2))), start=100 * index)
    store: dict[str, Any] = {}
    state = None
    rewrite: frozenset[str] = frozenset()
    slots: dict[str, int] = {}
    cuts = 0
    for event in sequence:
        after = decide(event, offers, state, PROFILE).state
        if after is state:
            continue  # a redelivery: nothing to store
        writes = split(ACCOUNT, state, after, before_in_rows=True, rewrite=rewrite, slots=slots)
        # Only what changed is written: the event's own transaction (a refund: its purchase) and
        # the event itself, whatever the account's size (and what a cut step left to write).
        assert len(writes.rows) <= 2 + len(rewrite)
        if data.draw(st.integers(0, 5)) == 0:
            # A crash after the summary and before the rows loses nothing: the summary carries
            # them, and the state read back writes them with its next step.
            write(store, writes, rows=False)
            stored = assemble(ACCOUNT, store[ACCOUNT], store.get)
            assert stored == as_stored(after)
            state, rewrite, slots = stored, carried(store[ACCOUNT]), slots_of(store[ACCOUNT])
            cuts += 1
            continue
        write(store, writes)
        rewrite, slots = frozenset(), writes.slots
        # The rows alone hold the state, and the store holds no row the summary does not name
        # (but those a cut step left undeleted: never read, they only take room).
        assert assemble(ACCOUNT, {**store[ACCOUNT], "fresh": {}}, store.get) == as_stored(after)
        named = {txn_key(ACCOUNT, ref) for ref in after["txns"]} | {recent_key(ACCOUNT, n) for n in writes.slots.values()}
        # one slot per recent event, never more than the recent events kept
        assert sorted(writes.slots.values()) == list(range(len(after["recent"])))
        held = {key for key in store if not is_summary_key(key)}
        assert held >= named
        if not cuts:
            assert held == named
        state = after


def test_a_state_stored_whole_is_read_as_is_and_then_written_in_rows() -> None:
    offers = OFFER_BOOKS["grocery-5"]
    state = None
    for event in fillers(3, start=0):
        state = decide(event, offers, state, PROFILE).state
    assert state is not None
    whole = as_stored(state)  # how a worker stored it before the summary and rows
    assert not in_rows(whole)
    assert assemble(ACCOUNT, whole, {}.get) is whole
    after = decide(fillers(1, start=10)[0], offers, whole, PROFILE).state
    writes = split(ACCOUNT, whole, after, before_in_rows=False)
    assert set(writes.rows) == {txn_key(ACCOUNT, ref) for ref in after["txns"]} | {
        recent_key(ACCOUNT, n) for n in range(len(after["recent"]))
    }
    store: dict[str, Any] = {}
    write(store, writes)
    assert in_rows(store[ACCOUNT])
    assert assemble(ACCOUNT, {**store[ACCOUNT], "fresh": {}}, store.get) == as_stored(after)


def test_a_missing_row_is_an_error_not_a_smaller_state() -> None:
    offers = OFFER_BOOKS["grocery-5"]
    after = decide(fillers(1, start=0)[0], offers, None, PROFILE).state
    writes = split(ACCOUNT, None, after, before_in_rows=True)
    summary = {**as_stored(writes.summary), "fresh": {}}
    with pytest.raises(MissingRow, match="acct-1"):
        assemble(ACCOUNT, summary, {}.get)


def test_keys_tell_summaries_from_rows() -> None:
    assert is_summary_key("acct-1")
    assert not is_summary_key(txn_key("acct-1", "txn-1"))
    assert not is_summary_key(recent_key("acct-1", 0))
    assert txn_key("acct-1", "0") != recent_key("acct-1", 0)
