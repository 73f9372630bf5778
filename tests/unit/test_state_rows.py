"""The stored layout of an account's state (``stream.core.state_rows``): a summary and rows, written
step by step as the worker writes them, read back as the very state the engine returned, even
when a crash cuts a step after its summary."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.events import CardEvent
from stream.core.memory import LOOSE_IDS_LIMIT, RECENT_EVENTS_LIMIT
from stream.core.outcomes import Outcome
from stream.core.rules import decide
from stream.core.state import AccountState
from stream.core.state_rows import (
    JSON_LAYOUT,
    Head,
    MissingRow,
    Summary,
    assemble,
    carried,
    decode_head,
    decode_summary,
    encode,
    in_rows,
    is_summary_key,
    recent_key,
    slots_of,
    txn_key,
)
from stream.core.state_writes import Writes, split
from tests.unit.test_rules_properties import OFFER_BOOKS, OFFER_NAMES, PROFILE, SEEDED, event_sequences, fillers

ACCOUNT = "acct-1"


def write(store: dict[str, bytes], writes: Writes, rows: bool = True) -> None:
    """Store one step's writes as the worker's table does (encoded values)."""
    store[ACCOUNT] = encode(writes.summary)
    if rows:
        store.update({key: encode(value) for key, value in writes.rows.items()})
        for key in writes.deletes:
            store.pop(key, None)  # a row a cut step never wrote may be gone by now


def no_single_reads(key: str) -> Any:
    raise AssertionError(f"row {key!r} read alone: every row is read at once")


def all_at_once(store: Mapping[str, Any]) -> Callable[[list[str]], list[Any]]:
    """A reader of many rows (``ChangelogTable.get_many`` for one partition) that counts nothing
    twice: each key asked once, none a summary's ``fresh`` row holds."""

    def read(keys: list[str]) -> list[Any]:
        assert len(set(keys)) == len(keys)
        return [store.get(key) for key in keys]

    return read


@SEEDED
@given(offers_name=OFFER_NAMES, events=event_sequences(multi_clearing=True), data=st.data())
def test_every_step_reads_back_as_the_engine_state(offers_name: str, events: list[CardEvent], data: st.DataObject) -> None:
    offers = OFFER_BOOKS[offers_name]
    sequence: list[CardEvent] = []
    for index, event in enumerate(events):
        sequence.append(event)
        if data.draw(st.integers(0, 4)) == 0:  # enough purchases to push events out of the recent ones
            sequence += fillers(data.draw(st.sampled_from((3, RECENT_EVENTS_LIMIT + 2))), start=100 * index)
    store: dict[str, bytes] = {}
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
            summary = decode_summary(store[ACCOUNT])
            assert head_of(decode_head(store[ACCOUNT])) == head_of(summary) == head_of(after)
            stored = assemble(ACCOUNT, summary, store.get)
            assert stored == after
            assert assemble(ACCOUNT, summary, no_single_reads, all_at_once(store)) == after
            state, rewrite, slots = stored, carried(summary), slots_of(summary)
            cuts += 1
            continue
        write(store, writes)
        rewrite, slots = frozenset(), writes.slots
        assert head_of(decode_head(store[ACCOUNT])) == head_of(after)
        # The rows alone hold the state, and the store holds no row the summary does not name
        # (but those a cut step left undeleted: never read, they only take room).
        assert assemble(ACCOUNT, without_fresh(store[ACCOUNT]), store.get) == after
        # Read all at once (one multi-get of the local store), the same state, no row read alone.
        assert assemble(ACCOUNT, without_fresh(store[ACCOUNT]), no_single_reads, all_at_once(store)) == after
        named = {txn_key(ACCOUNT, ref) for ref in after.txns} | {recent_key(ACCOUNT, n) for n in writes.slots.values()}
        # one slot per recent event, never more than the recent events kept
        assert sorted(writes.slots.values()) == list(range(len(after.recent)))
        held = {key for key in store if not is_summary_key(key)}
        assert held >= named
        if not cuts:
            assert held == named
        state = after


def head_of(stored: Any) -> tuple[Any, ...]:
    """What a partition's due-time index takes of a stored summary (``decode_head``) or a state."""
    return stored.due_ms, stored.wallet, stored.ticked


def test_a_summary_s_head_is_its_fields_of_the_same_names() -> None:
    """``Head`` reads fields of ``Summary`` by name: each is one of its fields, typed and defaulted
    alike, so a head read from any summary is that summary's (a renamed or retyped field fails here)."""
    summary_fields = {field.name: field for field in msgspec.structs.fields(Summary)}
    for field in msgspec.structs.fields(Head):
        assert field.name in summary_fields
        assert (field.type, field.default) == (summary_fields[field.name].type, summary_fields[field.name].default)
    assert decode_head(None) is None
    state = state_after(3)
    whole = as_json(state)  # stored whole, in JSON (the first layout): read whole
    assert head_of(decode_head(whole)) == head_of(state)
    summary = {**msgspec.to_builtins(split(ACCOUNT, None, state, before_in_rows=True).summary), "layout": JSON_LAYOUT}
    assert head_of(decode_head(json.dumps(summary).encode())) == head_of(state)


def state_after(purchases: int) -> AccountState:
    """An account's state after ``purchases`` filler purchases under the grocery offer."""
    state = None
    for event in fillers(purchases, start=0):
        state = decide(event, OFFER_BOOKS["grocery-5"], state, PROFILE).state
    assert state is not None
    return state


def without_fresh(raw: bytes) -> Summary:
    """A stored summary without the rows it carries: what the rows alone hold."""
    summary = decode_summary(raw)
    assert isinstance(summary, Summary)
    return msgspec.structs.replace(summary, fresh={})


def as_json(value: Any) -> bytes:
    return json.dumps(msgspec.to_builtins(value)).encode()


def test_a_state_stored_whole_is_read_as_is_and_then_written_in_rows() -> None:
    state = state_after(3)
    whole = decode_summary(as_json(state))  # how the first workers stored it: whole, in JSON
    assert not in_rows(whole) and whole == state
    assert assemble(ACCOUNT, whole, {}.get) is whole
    after = decide(fillers(1, start=10)[0], OFFER_BOOKS["grocery-5"], whole, PROFILE).state
    writes = split(ACCOUNT, whole, after, before_in_rows=False)
    assert set(writes.rows) == {txn_key(ACCOUNT, ref) for ref in after.txns} | {
        recent_key(ACCOUNT, n) for n in range(len(after.recent))
    }
    store: dict[str, bytes] = {}
    write(store, writes)
    assert in_rows(decode_summary(store[ACCOUNT]))
    assert assemble(ACCOUNT, without_fresh(store[ACCOUNT]), store.get) == after


def test_a_summary_and_rows_stored_in_json_are_read() -> None:
    state = state_after(3)
    writes = split(ACCOUNT, None, state, before_in_rows=True)
    summary = {**msgspec.to_builtins(writes.summary), "layout": JSON_LAYOUT}
    store = {key: as_json(value) for key, value in writes.rows.items()}
    read = decode_summary(json.dumps({**summary, "fresh": {}}).encode())
    assert in_rows(read)
    assert assemble(ACCOUNT, read, store.get) == state
    with_fresh = decode_summary(json.dumps(summary).encode())
    assert assemble(ACCOUNT, with_fresh, {}.get) == state


def test_values_are_messagepack_smaller_than_their_json() -> None:
    state = state_after(40)
    writes = split(ACCOUNT, None, state, before_in_rows=True)
    for key, value in [*writes.rows.items(), (ACCOUNT, writes.summary)]:
        stored = encode(value)
        assert stored[:1] not in (b"{", b"[") and len(stored) < len(as_json(value)), key


def test_a_missing_row_is_an_error_not_a_smaller_state() -> None:
    offers = OFFER_BOOKS["grocery-5"]
    after = decide(fillers(1, start=0)[0], offers, None, PROFILE).state
    writes = split(ACCOUNT, None, after, before_in_rows=True)
    with pytest.raises(MissingRow, match="acct-1"):
        assemble(ACCOUNT, without_fresh(encode(writes.summary)), {}.get)


def test_keys_tell_summaries_from_rows() -> None:
    assert is_summary_key("acct-1")
    assert not is_summary_key(txn_key("acct-1", "txn-1"))
    assert not is_summary_key(recent_key("acct-1", 0))
    assert txn_key("acct-1", "0") != recent_key("acct-1", 0)


def test_the_tick_that_last_changed_an_account_is_stored_and_carried_by_the_engine() -> None:
    # The worker sets it (stream.matcher); the engine never reads it but must not lose it.
    state = state_after(3)
    state.ticked = 41
    after = decide(fillers(1, start=10)[0], OFFER_BOOKS["grocery-5"], state, PROFILE).state
    assert after is not state and after.ticked == 41
    store: dict[str, bytes] = {}
    write(store, split(ACCOUNT, state, after, before_in_rows=False))
    stored = decode_summary(store[ACCOUNT])
    assert isinstance(stored, Summary) and stored.ticked == 41
    assert assemble(ACCOUNT, without_fresh(store[ACCOUNT]), store.get).ticked == 41  # type: ignore[union-attr]


def test_a_state_read_back_shares_its_repeated_texts_and_keeps_every_value() -> None:
    """Decoded rows have copies of their own of every text; read back, the texts that repeat
    (kinds, books, currencies, offers, the account, refs) are one object each again, as in the
    state the engine made, and the state is still equal to it."""
    state = None
    for n, event in enumerate(fillers(12, start=0)):  # the same purchases, at a grocer: each earns
        event = dataclasses.replace(event, mcc="5411", account_id=ACCOUNT, event_id=f"grocery-{n}")
        state = decide(event, OFFER_BOOKS["grocery-5"], state, PROFILE).state
    assert state is not None
    writes = split(ACCOUNT, None, state, before_in_rows=True)
    store = {key: encode(value) for key, value in writes.rows.items()}
    read = assemble(ACCOUNT, without_fresh(encode(writes.summary)), store.get)
    assert read == state
    assert read is not None
    entries = [entry for recent in read.recent.values() for entry in recent.entries]
    shares = [share for txn in read.txns.values() for share in txn.shares]
    assert len(entries) > 1 and len(shares) > 1
    for texts in (
        [entry.account_id for entry in entries],
        [entry.entry_kind for entry in entries if entry.entry_kind == entries[0].entry_kind],
        [entry.explanation.rounding for entry in entries],
        [share.offer_id for share in shares if share.offer_id == shares[0].offer_id],
        [share.currency for share in shares],
        [txn.status for txn in read.txns.values() if txn.status == next(iter(read.txns.values())).status],
    ):
        assert len(texts) > 1 and len({id(text) for text in texts}) == 1, texts[0]


def test_an_account_s_declines_keep_its_summary_bounded_and_a_forgotten_one_makes_the_same_entry_again() -> None:
    """A card-testing run: declined authorisations with ids of the most characters an input field
    holds. Their ids live in the summary (``loose``): 4,224 of them with 200-character ids made it
    larger than Kafka's 1 MB, and the worker wrote it again forever. The account keeps the last
    ``LOOSE_IDS_LIMIT``; a redelivery of one forgotten is declined again into the same entry id."""
    from datetime import timedelta

    from tests.factories import T0, card_event

    offers = OFFER_BOOKS["grocery-5"]
    declines = [
        card_event(
            event_id=f"{n:06d}-" + "x" * 249,
            transaction_ref=f"card-test-{n}",
            occurred_at=T0 + timedelta(seconds=n),
            response_code="05",
        )
        for n in range(LOOSE_IDS_LIMIT + 200)
    ]
    state, first = None, {}
    for event in declines:
        decision = decide(event, offers, state, PROFILE)
        assert decision.outcome is Outcome.DECLINED
        state, first[event.event_id] = decision.state, decision.entries
    assert state is not None
    assert list(state.loose) == [event.event_id for event in declines[-LOOSE_IDS_LIMIT:]]
    summary = encode(split(ACCOUNT, None, state, before_in_rows=True).summary)
    assert len(summary) < 400_000, len(summary)  # about 290 bytes a decline at most

    kept = declines[-RECENT_EVENTS_LIMIT - 1]  # kept, no longer among the recent events
    again = decide(kept, offers, state, PROFILE)
    assert again.outcome is Outcome.DUPLICATE and again.entries == ()
    forgotten = decide(declines[0], offers, state, PROFILE)
    assert forgotten.outcome is Outcome.DECLINED
    assert [e.accrual_id for e in forgotten.entries] == [e.accrual_id for e in first[declines[0].event_id]]
    assert forgotten.entries == first[declines[0].event_id]
