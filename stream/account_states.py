"""The matcher's account states: the Faust table they are stored in (a summary and rows per
account, ``stream.core.state_rows``), the states in use kept whole in memory, and an index of when
each account next falls due, so that a clock tick reads only the accounts it concerns.

Everything here runs inside the agent: reads and writes for an account happen while a message of
its partition is, and its writes go to that partition.

A batch's writes wait here (``pending``) until the matcher's flush hands them to the table
(``hand_over``): one summary per account and batch, however many of its events the batch holds,
carrying every row the batch wrote for it, then those rows, then the deletions. The summary stays
the commit point of all the account's steps in the batch (``stream.core.state_rows``): a changelog
cut after it and before a row loses nothing, a cut before it leaves the batch's steps unwritten.
At the hand-over, the account's recent events stored by earlier batches whose decisions were
delivered leave its state (``_let_go``): their entries need no longer be sent again.

An erasure (``erase``, GDPR: ``stream.gdpr``) deletes every key of an account, its summary and
each of its rows, whether its summary names the row or not (a step cut between its summary and its
deletions leaves a row no summary names); the deletions are staged in the table at once, after
whatever the batch had staged, so they are the account's last word on the changelog (tombstones).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream.changelog_table import DELETED, ChangelogTable
from stream.core.entries import Entry
from stream.core.events import CardEvent
from stream.core.memory import adds_a_name, crowded
from stream.core.payouts import has_cash, place_holder
from stream.core.state import AccountState, Recent, Txn
from stream.core.state_memory import memory_of
from stream.core.state_rows import (
    RecentRow,
    Summary,
    assemble,
    carried,
    decode_head,
    decode_summary,
    encode,
    in_rows,
    recent_key,
    slots_of,
    txn_key,
)
from stream.core.state_writes import split_rows, summary_of
from stream.due_times import DueTimes, TickedAt
from stream.metrics import STATE_CACHE_ACCOUNTS, STATE_CACHE_BYTES, STORE_MEMORY_USED
from stream.worker_app import store_memory_used
from topics.catalogue import account_partition

# How much of the accounts' whole states stays in memory between their events, in bytes as
# ``stream.core.state_memory.memory_of`` estimates them: the least recently used states leave first,
# whatever their number. A state not here is read from the local store (the summary, then each row it
# names). The worker's is its setting ``WORKER_STATE_CACHE_MB`` (the same default: README, Performance).
CACHED_BYTES = 192 * 2**20
# The accounts whose place holder (``_let_go``) is remembered delivered, the most recently stored kept:
# one forgotten has the holder's entries sent again once its window passes it (``leaving``), a replay.
HELD_ACCOUNTS = 65_536
# The largest stored summary (bytes) of an account that may name a new transaction or event id
# (``stream.core.memory.adds_a_name``). A summary names every transaction kept; one larger than Kafka
# takes (1 MB by default) was written again forever, the worker processing nothing else. Half of that
# leaves room for a batch's steps of the account (at most ``IN_FLIGHT_LIMIT``) and the rows it carries.
FULL_SUMMARY_BYTES = 512 * 1024
# What separates an account id from the rest of its rows' keys (``stream.core.state_rows``: never
# in an account id), so that ``<account><separator>`` starts every row key of the account.
_ROW_SEPARATOR = txn_key("", "")[0]


@dataclass(slots=True)
class Pending:
    """An account's writes since the last hand-over: its last state and its recent events' slots
    (its summary is made of them once, at the hand-over), every row written since (its last value)
    and every row deleted since, on the partition they were made on."""

    partition: int
    state: AccountState
    slots: dict[str, int]
    earlier: Mapping[str, Recent]  # its recent events before the batch (stored by earlier batches)
    rows: dict[str, Txn | RecentRow] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)


class AccountStates:
    """Read, write and find due the states of the accounts of this worker's partitions."""

    def __init__(self, table: ChangelogTable, partitions: int, cached: int = CACHED_BYTES) -> None:
        self.table = table
        self.partitions = partitions
        self.cached = cached  # the most bytes (``memory_of``) the states kept in memory take together
        self.cached_bytes = 0
        self._sizes: dict[str, int] = {}  # account -> what its state in ``_whole`` takes (``memory_of``)
        # account -> its state, whether stored in rows, the rows its summary carried when read
        # (to write again), and the slots of its recent events
        self._whole: OrderedDict[str, tuple[AccountState, bool, frozenset[str], dict[str, int]]] = OrderedDict()
        self._due: dict[int, DueTimes] = {}  # partition -> when its accounts next fall due, once scanned
        self._cash: dict[int, set[str]] = {}  # partition -> accounts whose wallet holds cash, once scanned
        # partition -> each account's clock offset of the tick that last changed it (AccountState.ticked), once scanned
        self._ticked: dict[int, TickedAt] = {}
        self.pending: dict[str, Pending] = {}  # account -> its writes not yet handed to the table
        # The entries of recent events the last hand-over's states drop, not known delivered (hand_over).
        self.leaving: list[tuple[str, tuple[Entry, ...]]] = []
        # account -> the recent event holding its place, kept though known delivered (_let_go)
        self._held: dict[str, str] = {}
        self._full: dict[str, int] = {}  # account -> its stored summary's bytes, at FULL_SUMMARY_BYTES or more

    def observe_memory(self) -> None:
        """Show where the states' memory goes (README, Metrics): what the states kept whole take, their
        accounts, and the local stores' shared block cache (once a RocksDB store is open)."""
        STATE_CACHE_BYTES.set(self.cached_bytes)
        STATE_CACHE_ACCOUNTS.set(len(self._whole))
        store = store_memory_used()
        if store is not None:
            STORE_MEMORY_USED.set(store)

    def get(self, account_id: str) -> AccountState | None:
        """The account's state as the engine takes it (None: never seen)."""
        pending = self.pending.get(account_id)
        if pending is not None:
            return pending.state
        held = self._whole.get(account_id)
        if held is not None:
            self._whole.move_to_end(account_id)
            return held[0]
        raw = self.table.get(account_id)
        self._note_size(account_id, len(raw) if raw is not None else 0)
        stored = decode_summary(raw)
        partition = account_partition(account_id, self.partitions)
        state = assemble(account_id, stored, self.table.get, lambda keys: self.table.get_many(keys, partition))
        if state is not None:
            self._keep(account_id, state, in_rows(stored), carried(stored), slots_of(stored))
        return state

    def write(self, account_id: str, before: AccountState | None, after: AccountState, partition: int) -> None:
        """Write the step from ``before`` (what ``get`` returned) to ``after`` on ``partition``
        (the account's: that of the message being processed). It waits in ``pending`` until the
        next ``hand_over``; the table sends it to the changelog at the flush, and the local store
        has it once the changelog acknowledged it (``ChangelogTable.settle``, which the matcher
        awaits before the step's entries leave)."""
        held = self._whole.get(account_id)
        if held is not None and held[0] is before:
            rows, deletes, slots = split_rows(account_id, before, after, before_in_rows=held[1], rewrite=held[2], slots=held[3])
        else:  # not the state last read or written (never seen, or dropped from memory meanwhile)
            rows, deletes, slots = split_rows(account_id, before, after, before_in_rows=False)
        pending = self.pending.get(account_id)
        if pending is None:
            pending = self.pending[account_id] = Pending(partition, after, slots, before.recent if before is not None else {})
        pending.state, pending.slots = after, slots
        for key, row in rows.items():
            pending.rows[key] = row
            pending.deletes.discard(key)
        for key in deletes:
            pending.rows.pop(key, None)
            pending.deletes.add(key)
        if account_id in self._sizes:  # kept in memory: its size is estimated again at the hand-over, not per event
            self._whole[account_id] = (after, True, frozenset(), slots)
            self._whole.move_to_end(account_id)
        else:
            self._keep(account_id, after, True, frozenset(), slots)
        cash = self._cash.get(account_partition(account_id, self.partitions))
        if cash is not None:
            if has_cash(after.wallet):
                cash.add(account_id)
            else:
                cash.discard(account_id)
        ticked = self._ticked.get(account_partition(account_id, self.partitions))
        if ticked is not None and after.ticked is not None:
            ticked.set(account_id, after.ticked)
        due = self._due.get(account_partition(account_id, self.partitions))
        if due is not None:
            due.set(account_id, after.due_ms)

    def hand_over(self, delivered: Callable[[str], Collection[str]] | None = None) -> list[str]:
        """Stage every pending write in the table, account by account: its summary (carrying all
        the rows the batch wrote for it), then those rows, then its deletions. Returns the accounts
        (to ``forget_accounts`` should the table drop the writes).

        ``delivered(account_id)``: the account's events whose entries are known delivered
        (``stream.progress.InFlightDecisions.delivered``). Those of them stored by an earlier batch
        leave its recent events first (``_let_go``): a redelivery finds them decided and has nothing
        to send again, as for any event past the window.

        The entries of the other recent events stored by an earlier batch that the new state no longer
        holds (pushed out of the window by its new events) go to ``leaving``: no delivery of theirs is
        known (read back after a restart, their messages maybe not read again yet), so the flush
        delivers them before it stores the state (``stream.outbox``)."""
        table = self.table
        accounts = list(self.pending)
        for account_id, pending in self.pending.items():
            known = set(delivered(account_id)) if delivered is not None else set()
            if (held := self._held.pop(account_id, None)) is not None:
                known.add(held)
            self._let_go(account_id, pending, known)
            if (size := self._sizes.get(account_id)) is not None:  # kept in memory: its size, once per batch
                self._sizes[account_id] = memory_of(self._whole[account_id][0])
                self.cached_bytes += self._sizes[account_id] - size
            recent = pending.state.recent
            self.leaving += [
                (account_id, was.entries)
                for event_id, was in pending.earlier.items()
                if was.entries and event_id not in recent and event_id not in known
            ]
            summary = encode(summary_of(pending.state, pending.slots, pending.rows))
            self._note_size(account_id, len(summary))
            table.stage(account_id, summary, pending.partition)
            for key, row in pending.rows.items():
                table.stage(key, encode(row), pending.partition)
            for key in pending.deletes:
                table.stage(key, DELETED, pending.partition)
        self.pending.clear()
        self._evict()
        return accounts

    def refusal(self, account_id: str, event: CardEvent, state: AccountState | None) -> str | None:
        """Why the card event is not decided now (None: it is): it would name a new transaction or id in its
        account's full summary (``FULL_SUMMARY_BYTES``), or join a transaction ``crowded`` with event ids."""
        if (size := self._full.get(account_id)) is not None and adds_a_name(state, event):
            return f"the account's stored summary is full ({size:,} bytes, {FULL_SUMMARY_BYTES:,} at most): no new transaction"
        if (ids := crowded(state, event)) is not None:
            return f"the event's transaction holds {ids:,} event ids, the most one keeps"
        return None

    def _note_size(self, account_id: str, size: int) -> None:
        if size >= FULL_SUMMARY_BYTES:
            self._full[account_id] = size
        elif self._full:
            self._full.pop(account_id, None)

    def _let_go(self, account_id: str, pending: Pending, delivered: Collection[str]) -> None:
        """The account's state, in memory and as the batch stores it, without the recent events
        among ``delivered`` that an earlier batch stored (never one of this batch: their entries
        leave after the changelog has this summary). Their rows stay in the store, named by no
        summary, until a later event takes their slot (or an erasure deletes every row). The event
        holding the account's latest place stays (``stream.core.payouts.place_holder``), remembered
        delivered: it leaves at a later hand-over once another event holds the place, and meanwhile
        its window passing it sends nothing again (``leaving``)."""
        state, earlier = pending.state, pending.earlier
        gone = {event_id for event_id in delivered if event_id in earlier and event_id in state.recent}
        if not gone:
            return
        holder = place_holder(state.recent)  # what a wallet opening is checked against (stream.core.payouts)
        if holder in gone:
            gone.discard(holder)
            self._held[account_id] = holder
            if len(self._held) > HELD_ACCOUNTS:
                del self._held[next(iter(self._held))]
        state.recent = {event_id: recent for event_id, recent in state.recent.items() if event_id not in gone}
        for event_id in gone:
            pending.slots.pop(event_id, None)

    def drop_pending(self) -> None:
        """The batch's writes were dropped: forget the pending accounts (read again from the store)."""
        self.forget_accounts(self.pending)
        self.pending.clear()

    def due(self, partition: int, now_ms: int) -> list[str]:
        """The accounts of ``partition`` with something due by ``now_ms``, the earliest first. The
        partition's accounts are read once from the store, then followed write by write; a tick then
        costs what is due, not what the partition holds (``stream.due_times``)."""
        index = self._due.get(partition)
        if index is None:
            index = self._due[partition] = self._scan(partition)
        return index.due_by(now_ms)

    def with_cash(self, partition: int) -> list[str]:
        """The accounts of ``partition`` whose wallet holds cash (``stream.core.payouts.has_cash``), in
        order. Read once from the store with the partition's due times, then followed write by write."""
        if partition not in self._cash:
            self._due[partition] = self._scan(partition)
        return sorted(self._cash[partition])

    def ticked_since(self, partition: int, offset: int) -> list[str]:
        """The accounts of ``partition`` a tick at ``offset`` or later changed (a tick read again: the
        worker stopped before it was committed), in order. Read once from the store with the partition's
        due times, then followed write by write."""
        if partition not in self._ticked:
            self._due[partition] = self._scan(partition)
        return self._ticked[partition].since(offset)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions this worker no longer owns (or owns anew): their states may change elsewhere,
        so nothing of them is kept in memory."""
        gone = set(partitions)
        self._full.clear()  # noted again as each full account is next read or stored
        for partition in gone:
            self._due.pop(partition, None)
            self._cash.pop(partition, None)
            self._ticked.pop(partition, None)
        for account_id in [a for a in self._whole if account_partition(a, self.partitions) in gone]:
            self._drop(account_id)

    def forget_accounts(self, accounts: Iterable[str]) -> None:
        """Accounts whose last writes were dropped before the changelog acknowledged them: read
        them again from the store."""
        for account_id in accounts:
            self._drop(account_id)

    def erase(self, account_id: str, partition: int) -> list[str]:
        """Delete every key of the account on ``partition`` (its own): its summary and all its rows.
        The batch's pending writes of the account are dropped first (their entries still leave at the
        flush: decided before the erasure), then each deletion is staged in the table, to reach the
        changelog as a tombstone at the next settle. Returns the keys deleted, the summary first."""
        pending = self.pending.pop(account_id, None)
        prefix = account_id + _ROW_SEPARATOR
        rows = set(self._stored_keys(prefix, partition))
        rows.update(key for key in getattr(self.table, "unsettled", {}) if isinstance(key, str) and key.startswith(prefix))
        if pending is not None:
            rows.update(pending.rows)
        held = self._drop(account_id)
        self._full.pop(account_id, None)
        stored = decode_summary(self.table.get(account_id)) if held is None else None
        if held is not None:  # the rows its state names, should the store not have them yet
            rows.update(txn_key(account_id, ref) for ref in held[0].txns)
            rows.update(recent_key(account_id, slot) for slot in held[3].values())
        elif isinstance(stored, Summary):
            rows.update(txn_key(account_id, ref) for ref in stored.refs)
            rows.update(recent_key(account_id, slot) for _, slot in stored.recent)
            rows.update(stored.fresh)
        keys = [account_id, *sorted(rows)]
        for key in keys:
            self.table.stage(key, DELETED, partition)
        self._cash.get(partition, set()).discard(account_id)
        for index in (self._due.get(partition), self._ticked.get(partition)):
            if index is not None:
                index.discard(account_id)
        return keys

    def _stored_keys(self, prefix: str, partition: int) -> list[str]:
        """The keys the local store holds that start with ``prefix`` (an account's rows, for its
        erasure). On RocksDB, only the partition's own store is read, from the prefix on (its keys
        are JSON strings, in byte order); any other store (in memory) is read whole. A partition's
        summaries are read by ``ChangelogTable.heads``."""
        store: Any = getattr(self.table, "data", None)
        if store is None or not hasattr(store, "_db_for_partition"):
            return [key for key in self.table.keys() if isinstance(key, str) and key.startswith(prefix)]
        start = store._encode_key(prefix)[:-1]  # the JSON string without its closing quote
        found = []
        for raw in store._db_for_partition(partition).keys(from_key=start):
            if not raw.startswith(start):
                break
            found.append(store._decode_key(raw))
        return found

    def _scan(self, partition: int) -> DueTimes:
        # The partition's own summaries (``heads``), not their rows, and of each only the fields read
        # here (``decode_head``): the table's whole key view reads every partition's store, and Faust's
        # RocksDB store counts its keys by reading them all once more. On RocksDB no key's partition is
        # worked out (a partition's million accounts would push the hot path's out of
        # ``account_partition``'s memory). The accounts with cash (scheduled payout runs) are found on
        # the way (``_cash``).
        times: dict[str, int] = {}
        cash: set[str] = set()
        ticked = TickedAt()
        for key, raw in self.table.heads(partition, _ROW_SEPARATOR, lambda key: account_partition(key, self.partitions)):
            stored = decode_head(raw)
            if stored is None:
                continue
            if stored.due_ms is not None:
                times[key] = stored.due_ms
            if has_cash(stored.wallet):
                cash.add(key)
            if stored.ticked is not None:
                ticked.set(key, stored.ticked)
        index = DueTimes(times)
        for account_id, pending in self.pending.items():  # not in the store yet
            if account_partition(account_id, self.partitions) == partition:
                index.set(account_id, pending.state.due_ms)
                if has_cash(pending.state.wallet):
                    cash.add(account_id)
                else:
                    cash.discard(account_id)
                if pending.state.ticked is not None:
                    ticked.set(account_id, pending.state.ticked)
        self._cash[partition] = cash
        self._ticked[partition] = ticked
        return index

    def _keep(
        self, account_id: str, state: AccountState, stored_in_rows: bool, rewrite: frozenset[str], slots: dict[str, int]
    ) -> None:
        self._drop(account_id)
        self._whole[account_id] = (state, stored_in_rows, rewrite, slots)
        self._sizes[account_id] = memory_of(state)
        self.cached_bytes += self._sizes[account_id]
        self._evict()

    def _evict(self) -> None:
        while self.cached_bytes > self.cached and len(self._whole) > 1:
            self._drop(next(iter(self._whole)))

    def _drop(self, account_id: str) -> tuple[AccountState, bool, frozenset[str], dict[str, int]] | None:
        held = self._whole.pop(account_id, None)
        if held is not None:
            self.cached_bytes -= self._sizes.pop(account_id)
        return held
