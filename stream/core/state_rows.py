"""How an account's state is stored: one small summary and a row per transaction and per recent
event, so that an event writes what it changed, not the whole account.

The rules engine works on one dict per account (``stream.core.rules``). Stored as one value, an
account with 2,000 purchases rewrote 1.6 MB on each of its events (the changelog, the local store,
and its JSON encoding, for every event). Here the same state is kept as:

- the **summary**, under the account id: everything but the transactions and the recent events'
  entries, with the names of the rows to read (``refs``, ``recent``) and the rows this step wrote
  (``fresh``);
- a **row** per transaction (``<account>\\x1ft\\x1f<ref>``) and per recent event with the entries
  it produced, in one of 32 slots (``<account>\\x1fr\\x1f<slot>``) that the next events reuse.

One step writes its summary first, then its rows, on the same changelog partition (the producer
delivers one partition in order). The summary carries the step's rows in ``fresh``, so the summary
alone is the step's commit point: a crash after it and before its rows loses nothing (``assemble``
reads ``fresh`` before the rows, and the account's next step writes those rows again: ``carried``),
and a crash before it leaves the step unwritten, to be decided again from the redelivered input.
A row no longer named (a forgotten transaction) is deleted after the summary: a crash in between
leaves a row no summary names, never read (it only takes room).

A summary stored before this layout (the whole state, with ``txns``) is read as it is, and the next
step of that account writes all of its rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

State = dict[str, Any]

LAYOUT_VERSION = 2
_SEPARATOR = "\x1f"  # never in an account id, a transaction ref or an event id (they are printable)
_TXN = "t"
_RECENT = "r"
# What a summary holds as is: the state's fields other than its transactions and recent events.
_SUMMARY_FIELDS = ("loose", "caps", "carry", "due_ms", "clock_ms")


class MissingRow(LookupError):
    """A summary names a row the store does not hold: the stored state is incomplete."""


def txn_key(account_id: str, ref: str) -> str:
    return f"{account_id}{_SEPARATOR}{_TXN}{_SEPARATOR}{ref}"


def recent_key(account_id: str, slot: int) -> str:
    """The row of one of the account's recent events: a slot, reused by the event that follows
    the one it held out of the recent events (no deletion to write, a fixed number of rows)."""
    return f"{account_id}{_SEPARATOR}{_RECENT}{_SEPARATOR}{slot}"


def is_summary_key(key: str) -> bool:
    """Whether a stored key is an account's summary (its id), not one of its rows."""
    return _SEPARATOR not in key


def in_rows(summary: State | None) -> bool:
    """Whether a stored summary is in this layout (its rows are stored apart)."""
    return summary is not None and summary.get("layout") == LAYOUT_VERSION


@dataclass(frozen=True, slots=True)
class Writes:
    """What one step stores, in this order: the summary, then ``rows``, then ``deletes``; and the
    slots of the recent events it leaves (the next step's ``slots``)."""

    summary: State
    rows: dict[str, Any]
    deletes: tuple[str, ...]
    slots: dict[str, int]


def slots_of(summary: State | None) -> dict[str, int]:
    """The slot of each recent event a stored summary names."""
    return {event_id: slot for event_id, slot in summary["recent"]} if in_rows(summary) else {}  # type: ignore[index]


def assemble(account_id: str, summary: State | None, row: Callable[[str], Any]) -> State | None:
    """The engine's state of an account from its stored summary, reading each row it names with
    ``row`` (None when absent). A summary stored whole, before this layout, is returned as is."""
    if summary is None or not in_rows(summary):
        return summary
    fresh: dict[str, Any] = summary.get("fresh") or {}

    def read(key: str) -> Any:
        value = fresh[key] if key in fresh else row(key)
        if value is None:
            raise MissingRow(f"account {account_id}: the stored state names a row the store does not hold")
        return value

    state: State = {field: summary.get(field) for field in _SUMMARY_FIELDS}
    state["txns"] = {ref: read(txn_key(account_id, ref)) for ref in summary["refs"]}
    recent: dict[str, Any] = {}
    for event_id, slot in summary["recent"]:
        held_for, held = read(recent_key(account_id, slot))
        if held_for != event_id:
            raise MissingRow(f"account {account_id}: a recent event's slot holds another event")
        recent[event_id] = held
    state["recent"] = recent
    return state


def carried(summary: State | None) -> frozenset[str]:
    """The rows a stored summary carries (its step's): the store may not hold them yet, so the
    next step of the account writes them again (``split``'s ``rewrite``)."""
    return frozenset((summary or {}).get("fresh") or ()) if in_rows(summary) else frozenset()


def split(
    account_id: str,
    before: State | None,
    after: State,
    before_in_rows: bool,
    rewrite: frozenset[str] = frozenset(),
    slots: Mapping[str, int] | None = None,
) -> Writes:
    """What to store for the step from ``before`` (as last stored; None: a new account) to
    ``after``. Only the transactions and recent events that changed are written: the engine never
    mutates a state, so a transaction it did not touch is the very same object in both (a state
    stored whole before this layout, ``before_in_rows`` False, has all its rows written), and the
    rows in ``rewrite`` that ``after`` still names (``carried``). ``slots``: where ``before``'s
    recent events are stored (``slots_of`` its summary, or the last ``Writes.slots``)."""
    old_txns: dict[str, Any] = before["txns"] if before is not None and before_in_rows else {}
    old_slots = dict(slots or {}) if before is not None and before_in_rows else {}
    rows: dict[str, Any] = {}
    for ref, txn in after["txns"].items():
        key = txn_key(account_id, ref)
        if old_txns.get(ref) is not txn or key in rewrite:
            rows[key] = txn
    new_slots = {event_id: old_slots[event_id] for event_id in after["recent"] if event_id in old_slots}
    free = sorted(set(old_slots.values()) - set(new_slots.values()))
    taken = set(new_slots.values())
    for event_id, held in after["recent"].items():
        if event_id in new_slots:
            key = recent_key(account_id, new_slots[event_id])
            if key in rewrite:
                rows[key] = [event_id, held]
            continue
        slot = free.pop(0) if free else min(n for n in range(len(taken) + 1) if n not in taken)
        taken.add(slot)
        new_slots[event_id] = slot
        rows[recent_key(account_id, slot)] = [event_id, held]
    deletes = (
        *(txn_key(account_id, ref) for ref in old_txns if ref not in after["txns"]),
        *(recent_key(account_id, slot) for slot in free),  # slots no event took (not in a normal step)
    )
    summary: State = {
        "layout": LAYOUT_VERSION,
        **{field: after.get(field) for field in _SUMMARY_FIELDS},
        "refs": list(after["txns"]),
        # in the order decided, the oldest first, each with its row's slot
        "recent": [[event_id, new_slots[event_id]] for event_id in after["recent"]],
        "fresh": rows,
    }
    return Writes(summary, rows, deletes, new_slots)
