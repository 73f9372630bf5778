"""What the engine derives from an account's transactions so that one event costs what it touches,
not what the account holds: never stored, always equal to recomputing it from the state.

- ``ids``: every event id the account's transactions keep, so a new event id is known new without
  reading every transaction (``stream.core.memory.known``; an id the set holds is looked up in
  every transaction: a redelivery mostly finds its own transaction first). Only for an account of
  more than ``IDS_FROM`` transactions: reading a few costs less than the set takes room;
- ``due``: a heap of (due time, ref), so the account's next due time (``AccountState.due_ms``) is
  the earliest one still true (``stream.core.lifecycle.next_due_ms`` in full);
- ``idle``: a heap of (last event time, ref) of the settled transactions, the only ones the
  horizon forgets (``stream.core.memory``);
- ``event_count`` and ``share_count``: how many event ids and cashback shares the transactions
  hold together, what a state's memory is estimated from (``stream.core.state_memory``), kept
  exactly as each step changes or forgets transactions instead of counted in every one at each
  estimate.

Nothing of it is trusted blindly: a heap entry no longer true (its transaction changed or
forgotten) is dropped when it reaches the top (every change of a transaction pushes its new
entries), and ``ids`` may hold more than the transactions keep (ids of transactions forgotten or
made anew, or of another state decided from the same one): it only ever says which ids are
certainly new. So the index is never wrong, at worst slower; it is made again when mostly made of
entries no longer true.

It is kept beside the state, not in it (an undeclared attribute: never encoded, compared or copied,
``AccountState`` is a ``dict=True`` record), built from the state when missing (a state read from
the store, or copied). ``decide`` derives the returned state's from the given state's (``derive``:
``ids`` is shared, it only ever grows; the heaps are copied before they change), so the given
state keeps its own and may be decided on again (a budget grant decides twice) at no cost. The
state ``decide`` returns also keeps what its step changed (``Step``), so that
``stream.core.state_rows`` finds the rows to write without comparing every transaction.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import NamedTuple

from stream.core.lifecycle import settled, txn_due_ms
from stream.core.state import AccountState, Txn

IDS_FROM = 32  # transactions: an account of fewer has no ``ids`` (its new ids are looked up in all)
_INDEX = "_index"  # the attributes kept beside a state (AccountState.__dict__)
_PARENT_OF = "_parent_of"
_STEP = "_step"


class TxnIndex:
    """The derived index of one state's transactions (``txns``, the very dict it describes)."""

    __slots__ = ("_own_due", "_own_idle", "due", "event_count", "idle", "ids", "kept", "share_count", "txns")

    def __init__(self, txns: dict[str, Txn]) -> None:
        self.txns = txns
        self.ids: set[str] | None = _ids(txns) if len(txns) > IDS_FROM else None
        self.kept = len(self.ids) if self.ids is not None else 0  # about how many of ``ids`` are kept
        self.due: list[tuple[int, str]] = []
        self.idle: list[tuple[int, str]] = []
        self._own_due = self._own_idle = True  # the heaps are this index's own (not shared with another)
        self._fill(txns.items())
        self.event_count, self.share_count = tally(txns)  # exact, unlike ``kept``

    def _fill(self, items: Iterable[tuple[str, Txn]]) -> None:
        due, idle = self.due, self.idle
        for ref, txn in items:
            when = txn_due_ms(txn)
            if when is not None:
                due.append((when, ref))
            if txn.last_ms is not None and settled(txn):
                idle.append((txn.last_ms, ref))
        heapq.heapify(due)
        heapq.heapify(idle)

    def derive(self) -> TxnIndex:
        """An index to change into the next state's; this one stays true for its state."""
        child = TxnIndex.__new__(TxnIndex)
        child.txns, child.ids, child.kept = self.txns, self.ids, self.kept
        child.due, child.idle, child._own_due, child._own_idle = self.due, self.idle, False, False
        child.event_count, child.share_count = self.event_count, self.share_count
        return child

    def _due(self) -> list[tuple[int, str]]:
        if not self._own_due:
            self.due, self._own_due = list(self.due), True
        return self.due

    def _idle(self) -> list[tuple[int, str]]:
        if not self._own_idle:
            self.idle, self._own_idle = list(self.idle), True
        return self.idle

    def fingerprint(self, event_id: str) -> str | None:
        """The fingerprint the transactions keep for ``event_id`` (None: none keeps it)."""
        if self.ids is not None and event_id not in self.ids:
            return None
        return next((txn.events[event_id] for txn in self.txns.values() if event_id in txn.events), None)

    def advance(
        self, txns: dict[str, Txn], own: bool, changed: Iterable[str], event_id: str, home: str | None, before_ms: int
    ) -> tuple[dict[str, Txn], tuple[str, ...]]:
        """Follow a step: ``txns`` (the step's; ``own``: a copy it may change) with the ``changed``
        transactions and the event id ``home`` now keeps; then forget the settled transactions last
        changed before ``before_ms``. Returns the transactions kept and those forgotten (in the
        state's order)."""
        if home is not None and self.ids is not None:
            self.ids.add(event_id)  # shared: another state holding it reads its transactions
            self.kept += 1
        before = self.txns  # the transactions this index described (the state's the step was decided on)
        for ref in changed:
            txn = txns.get(ref)
            if (was := before.get(ref)) is not None:
                self.event_count -= len(was.events)
                self.share_count -= len(was.shares)
            if txn is None:
                continue
            self.event_count += len(txn.events)
            self.share_count += len(txn.shares)
            when = txn_due_ms(txn)
            if when is not None:
                heapq.heappush(self._due(), (when, ref))
            elif txn.last_ms is not None and settled(txn):  # (nothing of it due: the first test of settled)
                heapq.heappush(self._idle(), (txn.last_ms, ref))
        stale: set[str] = set()
        if self.idle and self.idle[0][0] < before_ms:
            idle = self._idle()
            while idle and idle[0][0] < before_ms:
                last_ms, ref = heapq.heappop(idle)
                txn = txns.get(ref)
                if txn is not None and txn.last_ms == last_ms and settled(txn):
                    stale.add(ref)
        forgotten: tuple[str, ...] = ()
        if stale:
            forgotten = _in_order(txns, stale)
            if not own:
                txns = dict(txns)
            for ref in forgotten:  # their ids stay in ``ids`` (shared) until it is made again
                gone = txns.pop(ref)
                self.kept -= len(gone.events)
                self.event_count -= len(gone.events)
                self.share_count -= len(gone.shares)
        self.txns = txns
        limit = 2 * len(txns) + 64
        if len(self.due) > limit or len(self.idle) > limit:  # mostly entries no longer true
            self.due, self.idle, self._own_due, self._own_idle = [], [], True, True
            self._fill(txns.items())
        if (len(txns) > IDS_FROM) if self.ids is None else (len(self.ids) > 2 * max(self.kept, 0) + 256):
            self.ids = _ids(txns)  # made (anew: mostly ids no longer kept), not shared
            self.kept = len(self.ids)
        return txns, forgotten

    def next_due_ms(self) -> int | None:
        """The earliest time anything of the transactions falls due, or None."""
        txns = self.txns
        while self.due:
            when, ref = self.due[0]
            txn = txns.get(ref)
            if txn is not None and txn_due_ms(txn) == when:
                return when
            heapq.heappop(self._due())
        return None


def _ids(txns: dict[str, Txn]) -> set[str]:
    return {event_id for txn in txns.values() for event_id in txn.events}


def _in_order(txns: dict[str, Txn], refs: set[str]) -> tuple[str, ...]:
    """``refs`` in the order of ``txns`` (the oldest come first: forgotten ones mostly are)."""
    found: list[str] = []
    for ref in txns:
        if ref in refs:
            found.append(ref)
            if len(found) == len(refs):
                break
    return tuple(found)


def _kept_index(state: AccountState) -> TxnIndex | None:
    """The index kept beside the state, if it describes the state's transactions (None: none does)."""
    index: TxnIndex | None = state.__dict__.get(_INDEX)
    return index if index is not None and index.txns is state.txns else None


def index_of(state: AccountState) -> TxnIndex:
    """The state's index (built when missing)."""
    index = _kept_index(state)
    if index is None:
        index = state.__dict__[_INDEX] = TxnIndex(state.txns)
    return index


def tally(txns: dict[str, Txn]) -> tuple[int, int]:
    """The event ids and shares ``txns`` hold together, every transaction read."""
    events = shares = 0
    for txn in txns.values():
        events += len(txn.events)
        shares += len(txn.shares)
    return events, shares


def counts_of(state: AccountState) -> tuple[int, int] | None:
    """The event ids and shares the state's transactions hold together, as its index keeps them
    (None: no index describes them; a state read from the store has none until decided on)."""
    index = _kept_index(state)
    return None if index is None else (index.event_count, index.share_count)


def derive(state: AccountState) -> TxnIndex:
    """An index to change into the next state's (``TxnIndex.derive``): the state keeps its own."""
    return index_of(state).derive()


class Step(NamedTuple):
    """What a step from a state to the next changed: the transactions it copied or made, and those
    it forgot (in the state's order). Left beside both states (``keep``): the same object beside
    each tells that one was decided from the other."""

    changed: tuple[str, ...]
    forgotten: tuple[str, ...]


def keep(
    state: AccountState, index: TxnIndex, parent: AccountState, changed: AbstractSet[str], forgotten: tuple[str, ...]
) -> None:
    """Keep ``index`` beside ``state``, decided from ``parent``, with what the step changed."""
    step = parent.__dict__[_PARENT_OF] = Step(tuple(changed), forgotten)  # a parent decided on again gets another
    kept = state.__dict__
    kept[_INDEX] = index
    kept[_STEP] = step


def step_from(before: AccountState, after: AccountState) -> Step | None:
    """What the step from ``before`` to ``after`` changed, when ``after`` was decided from it."""
    step: Step | None = after.__dict__.get(_STEP)
    if step is None or before.__dict__.get(_PARENT_OF) is not step:
        return None
    return step
