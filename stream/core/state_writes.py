"""What one step of an account stores (``stream.core.state_rows`` says how a state is stored): the
transactions and recent events it changed, each in its row, the rows it deletes, and the summary
naming them, made from the state alone so that a batch makes it once per account (``summary_of``).

``split`` compares the state before the step with the state after it. The engine never mutates a
state, so a transaction the step did not touch is the very same object in both; and it records what
the step changed (``stream.core.account_index.Step``), so only those transactions are read. Recent
events keep their slots; the events the step added take the slots the ones it dropped left.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice
from typing import Any, NamedTuple

from stream.core.account_index import step_from
from stream.core.state import AccountState, Recent, Txn
from stream.core.state_rows import LAYOUT_VERSION, RecentRow, Summary, recent_key, txn_key, txn_ref


class Writes(NamedTuple):
    """What one step stores, in this order: the summary, then ``rows``, then ``deletes``; and the
    slots of the recent events it leaves (the next step's ``slots``)."""

    summary: Summary
    rows: dict[str, Txn | RecentRow]
    deletes: tuple[str, ...]
    slots: dict[str, int]


def _changed(before: AccountState | None, after: AccountState) -> tuple[list[str] | None, tuple[str, ...] | None]:
    """The transactions of ``after`` that may differ from ``before``'s, in ``after``'s order, and
    those ``before`` had and ``after`` forgot, in ``before``'s order, as the step from one to the
    other kept them (``stream.core.account_index.Step``); (None, None): not known, compare all."""
    if before is None:
        return None, None
    if before is after:  # a redelivery: the very state
        return [], ()
    step = step_from(before, after)
    if step is None:
        return None, None
    new_txns = after.txns
    if len(step.changed) == 1:  # the most common step: one transaction changed or made
        (ref,) = step.changed
        if ref not in new_txns:
            return [], step.forgotten
        if ref in before.txns or next(reversed(new_txns)) == ref:
            return [ref], step.forgotten
        return None, step.forgotten
    existing = [ref for ref in step.changed if ref in before.txns and ref in new_txns]
    made = {ref for ref in step.changed if ref not in before.txns and ref in new_txns}
    if len(existing) > 1:
        return None, step.forgotten
    # A transaction made by the step comes after all those its state had, in the order it was made.
    last = list(islice(reversed(new_txns), len(made)))[::-1]
    if set(last) != made:
        return None, step.forgotten
    return existing + last, step.forgotten


def _slots(
    account_id: str, recent: dict[str, Recent], old_slots: Mapping[str, int], rewrite: frozenset[str], rows: dict[str, Any]
) -> tuple[dict[str, int], list[int]]:
    """The slot of each of the ``recent`` events (those already stored keep theirs, the others
    take the free ones, the lowest first), with their rows (and those ``rewrite`` names) added to
    ``rows``; and the slots left free."""
    new_slots = {event_id: old_slots[event_id] for event_id in recent if event_id in old_slots}
    free = sorted(set(old_slots.values()) - set(new_slots.values()))
    taken = set(new_slots.values())
    for event_id, held in recent.items():
        if event_id in new_slots:
            if rewrite and (key := recent_key(account_id, new_slots[event_id])) in rewrite:
                rows[key] = RecentRow(event_id, held)
            continue
        slot = free.pop(0) if free else min(n for n in range(len(taken) + 1) if n not in taken)
        taken.add(slot)
        new_slots[event_id] = slot
        rows[recent_key(account_id, slot)] = RecentRow(event_id, held)
    return new_slots, free


def _next_slots(
    account_id: str, recent: dict[str, Recent], old_slots: Mapping[str, int], rows: dict[str, Any]
) -> tuple[dict[str, int], list[int]] | None:
    """``_slots`` (with nothing to rewrite) when the events already stored come first in
    ``recent``, in the order of ``old_slots`` (a step drops the oldest and adds its own at the end):
    only the events dropped and added are read. None otherwise."""
    new_slots = dict(old_slots)
    gone = old_slots.keys() - recent.keys()
    for event_id in gone:
        del new_slots[event_id]
    kept = len(new_slots)
    if list(new_slots) != list(islice(recent, kept)):
        return None
    free = sorted({old_slots[event_id] for event_id in gone} - set(new_slots.values())) if gone else []
    taken: set[int] | None = None
    for event_id in islice(recent, kept, None):
        if free:
            slot = free.pop(0)
        else:
            taken = set(new_slots.values()) if taken is None else taken
            slot = min(n for n in range(len(taken) + 1) if n not in taken)
        if taken is not None:
            taken.add(slot)
        new_slots[event_id] = slot
        rows[recent_key(account_id, slot)] = RecentRow(event_id, recent[event_id])
    return new_slots, free


def split(
    account_id: str,
    before: AccountState | None,
    after: AccountState,
    before_in_rows: bool,
    rewrite: frozenset[str] = frozenset(),
    slots: Mapping[str, int] | None = None,
) -> Writes:
    """What to store for the step from ``before`` to ``after``: ``split_rows``, and the summary
    naming them (``summary_of``)."""
    rows, deletes, new_slots = split_rows(account_id, before, after, before_in_rows, rewrite, slots)
    return Writes(summary_of(after, new_slots, rows), rows, deletes, new_slots)


def split_rows(
    account_id: str,
    before: AccountState | None,
    after: AccountState,
    before_in_rows: bool,
    rewrite: frozenset[str] = frozenset(),
    slots: Mapping[str, int] | None = None,
) -> tuple[dict[str, Txn | RecentRow], tuple[str, ...], dict[str, int]]:
    """The rows to store for the step from ``before`` (as last stored; None: a new account) to
    ``after``. Only the transactions and recent events that changed are written: the engine never
    mutates a state, so a transaction it did not touch is the very same object in both (a state
    stored whole before this layout, ``before_in_rows`` False, has all its rows written), and the
    rows in ``rewrite`` that ``after`` still names (``carried``). ``slots``: where ``before``'s
    recent events are stored (``slots_of`` its summary, or the last ``Writes.slots``). When
    ``after`` was decided from ``before``, only the transactions its step changed are read (the
    engine keeps which: ``stream.core.account_index.Step``), else every one is compared; and only
    the recent events that came and went, when the others kept their order."""
    old_txns: dict[str, Txn] = before.txns if before is not None and before_in_rows else {}
    old_slots: Mapping[str, int] = (slots or {}) if before is not None and before_in_rows else {}  # read, never changed
    rows: dict[str, Txn | RecentRow] = {}
    changed, forgotten = _changed(before, after) if old_txns else (None, None)
    for ref in after.txns if changed is None else changed:
        txn = after.txns[ref]
        if old_txns.get(ref) is not txn:
            rows[txn_key(account_id, ref)] = txn
    for key in rewrite:  # rows a cut step may not have written, still named
        named = txn_ref(key)
        if named is not None and named in after.txns:
            rows.setdefault(key, after.txns[named])
    slotted = None if rewrite or not old_slots else _next_slots(account_id, after.recent, old_slots, rows)
    new_slots, free = slotted or _slots(account_id, after.recent, old_slots, rewrite, rows)
    deletes: tuple[str, ...] = ()
    if forgotten != () or free:
        deletes = (
            *(
                txn_key(account_id, ref)
                for ref in (old_txns if forgotten is None else forgotten)
                if ref in old_txns and ref not in after.txns
            ),
            *(recent_key(account_id, slot) for slot in free),  # slots no event took (not in a normal step)
        )
    return rows, deletes, new_slots


def summary_of(state: AccountState, slots: Mapping[str, int], fresh: Mapping[str, Txn | RecentRow]) -> Summary:
    """The summary of ``state``, its recent events in ``slots`` (``Writes.slots``), carrying ``fresh``:
    the rows written since the account's last summary (its commit point). Made once per account and
    batch by the worker, however many of the account's steps the batch holds: it names every
    transaction of the account."""
    return Summary(
        layout=LAYOUT_VERSION,
        refs=list(state.txns),
        # in the order decided, the oldest first, each with its row's slot
        recent=list(zip(state.recent, map(slots.__getitem__, state.recent), strict=True)),
        loose=state.loose,
        caps=state.caps,
        carry=state.carry,
        due_ms=state.due_ms,
        clock_ms=state.clock_ms,
        fresh=dict(fresh),
        watch=state.watch,
        lots=state.lots,
        wallet=state.wallet,
        payouts=state.payouts,
        ticked=state.ticked,
    )
