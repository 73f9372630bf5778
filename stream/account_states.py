"""The matcher's account states: the Faust table they are stored in (a summary and rows per
account, ``stream.core.state_rows``), the states in use kept whole in memory, and an index of when
each account next falls due, so that a clock tick reads only the accounts it concerns.

Everything here runs inside the agent (Faust keys a table write to the partition of the message
being processed): reads and writes for an account happen while a message of its partition is.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import faust
from faust.types import FutureMessage

from stream.core.state_rows import Writes, assemble, carried, in_rows, is_summary_key, slots_of, split
from topics.catalogue import account_partition

log = logging.getLogger(__name__)

State = dict[str, Any]

# How many accounts' whole states stay in memory between their events. A state not here is read
# from the local store (the summary, then each row it names).
CACHED_ACCOUNTS = 4096


class ChangelogTable(faust.Table):
    """A Faust table that keeps the futures of its changelog sends until they are taken, so that
    a caller can wait until what it wrote is on the changelog topic."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unacked: list[FutureMessage] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> FutureMessage:
        sent = super().send_changelog(*args, **kwargs)
        self.unacked.append(sent)
        return sent

    def take_sends(self) -> list[FutureMessage]:
        sends, self.unacked = self.unacked, []
        return sends


class AccountStates:
    """Read, write and find due the states of the accounts of this worker's partitions."""

    def __init__(self, table: Any, partitions: int, cached: int = CACHED_ACCOUNTS) -> None:
        self.table = table
        self.partitions = partitions
        self.cached = cached
        # account -> its state, whether stored in rows, the rows its summary carried when read
        # (to write again), and the slots of its recent events
        self._whole: OrderedDict[str, tuple[State, bool, frozenset[str], dict[str, int]]] = OrderedDict()
        self._due: dict[int, dict[str, int]] = {}  # partition -> {account: due_ms}, once scanned

    def get(self, account_id: str) -> State | None:
        """The account's state as the engine takes it (None: never seen)."""
        held = self._whole.get(account_id)
        if held is not None:
            self._whole.move_to_end(account_id)
            return held[0]
        summary = self.table.get(account_id)
        state = assemble(account_id, summary, self.table.get)
        if state is not None:
            self._keep(account_id, state, in_rows(summary), carried(summary), slots_of(summary))
        return state

    async def store(self, account_id: str, before: State | None, after: State, still_owned: Callable[[], None]) -> None:
        """Store the step from ``before`` (what ``get`` returned) to ``after``: the summary first,
        then the rows that changed, then the deletions (``stream.core.state_rows``); return once the
        changelog has them all. A send the broker refused (away longer than the producer retries)
        is made again, the same keys and values, until it is acknowledged; ``still_owned`` raises
        when the partition was lost meanwhile (its next owner decides from what the changelog has)."""
        held = self._whole.get(account_id)
        if held is not None and held[0] is before:
            writes = split(account_id, before, after, before_in_rows=held[1], rewrite=held[2], slots=held[3])
        else:  # not the state last read or written (never seen, or dropped from memory meanwhile)
            writes = split(account_id, before, after, before_in_rows=False)
        sends = self._write(account_id, writes)
        self._keep(account_id, after, True, frozenset(), writes.slots)
        due = self._due.get(account_partition(account_id, self.partitions))
        if due is not None:
            if after.get("due_ms") is None:
                due.pop(account_id, None)
            else:
                due[account_id] = after["due_ms"]
        delay = 0.2
        while sends:
            results = await asyncio.gather(*sends, return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is None:
                return
            log.warning("a state write did not reach the changelog (%s); writing it again in %.1fs", type(failed).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            still_owned()
            sends = self._write(account_id, writes)

    def _write(self, account_id: str, writes: Writes) -> list[FutureMessage]:
        self.table[account_id] = writes.summary
        for key, value in writes.rows.items():
            self.table[key] = value
        for key in writes.deletes:
            del self.table[key]
        return self.table.take_sends() if isinstance(self.table, ChangelogTable) else []

    def due(self, partition: int, now_ms: int) -> list[str]:
        """The accounts of ``partition`` with something due by ``now_ms``, the earliest first. The
        partition's accounts are read once from the store, then followed write by write."""
        index = self._due.get(partition)
        if index is None:
            index = self._due[partition] = self._scan(partition)
        return sorted((account for account, when in index.items() if when <= now_ms), key=index.__getitem__)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions this worker no longer owns (or owns anew): their states may change elsewhere,
        so nothing of them is kept in memory."""
        gone = set(partitions)
        for partition in gone:
            self._due.pop(partition, None)
        for account_id in [a for a in self._whole if account_partition(a, self.partitions) in gone]:
            del self._whole[account_id]

    def _scan(self, partition: int) -> dict[str, int]:
        index: dict[str, int] = {}
        for key in list(self.table.keys()):
            if is_summary_key(key) and account_partition(key, self.partitions) == partition:
                summary = self.table.get(key)
                if summary and summary.get("due_ms") is not None:
                    index[key] = summary["due_ms"]
        return index

    def _keep(self, account_id: str, state: State, stored_in_rows: bool, rewrite: frozenset[str], slots: dict[str, int]) -> None:
        self._whole[account_id] = (state, stored_in_rows, rewrite, slots)
        self._whole.move_to_end(account_id)
        while len(self._whole) > self.cached:
            self._whole.popitem(last=False)
