"""When each account of a partition next falls due, and which tick changed it last: the indexes a
clock tick reads, so that a tick costs what is due, not what the partition holds.

``DueTimes`` answers "which accounts are due by this time, the earliest first" by popping a heap of
(due time, account) up to that time: O(k log n) for k accounts due among n, where reading a mapping
of every account and sorting the due ones cost O(n) at every tick (a bank's partition holds
millions of accounts, a tick comes every ``CLOCK_INTERVAL_S``). A changed due time pushes a new
entry and leaves the old one in the heap, skipped when it surfaces (it no longer matches the
account's time); the heap is rebuilt from the mapping when the skipped entries outnumber the live
ones, so it stays within about twice the accounts.

``TickedAt`` keeps, beside each account's last changing tick, the latest of them: a tick read for
the first time (every tick but one read again after a stop) is later than all of them, and finds no
account without reading any.
"""

from __future__ import annotations

import heapq


class DueTimes:
    """Accounts and their due times (milliseconds), the ones due by a time found the earliest first."""

    def __init__(self, times: dict[str, int] | None = None) -> None:
        """``times``: account -> due time, taken as they are (a partition's, read from its store) and
        heaped at once, where setting them one by one pushed each."""
        self._when: dict[str, int] = times if times is not None else {}
        self._heap: list[tuple[int, str]] = [(when, account) for account, when in self._when.items()]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._when)

    def __contains__(self, account_id: object) -> bool:
        return account_id in self._when

    def get(self, account_id: str) -> int | None:
        return self._when.get(account_id)

    def set(self, account_id: str, due_ms: int | None) -> None:
        """The account next falls due at ``due_ms`` (None: nothing due, it leaves the index)."""
        if due_ms is None:
            self._when.pop(account_id, None)
            return
        if self._when.get(account_id) == due_ms:
            return
        self._when[account_id] = due_ms
        heapq.heappush(self._heap, (due_ms, account_id))
        if len(self._heap) > 2 * len(self._when) + 64:
            self._heap = [(when, account) for account, when in self._when.items()]
            heapq.heapify(self._heap)

    def discard(self, account_id: str) -> None:
        self._when.pop(account_id, None)

    def due_by(self, now_ms: int) -> list[str]:
        """The accounts due at or before ``now_ms``, the earliest first (then by account id). They
        stay in the index: an account leaves it when its state says nothing is due (``set``)."""
        heap, when = self._heap, self._when
        found: list[tuple[int, str]] = []
        seen: set[str] = set()
        while heap and heap[0][0] <= now_ms:
            entry = heapq.heappop(heap)
            due_ms, account_id = entry
            if when.get(account_id) == due_ms and account_id not in seen:
                seen.add(account_id)
                found.append(entry)
        for entry in found:
            heapq.heappush(heap, entry)
        return [account_id for _, account_id in found]


class TickedAt:
    """Each account's clock offset of the last tick that changed it, and the latest of them."""

    def __init__(self) -> None:
        self._at: dict[str, int] = {}
        self._latest = -1  # never below any offset held (an account erased may leave it higher)

    def __len__(self) -> int:
        return len(self._at)

    def set(self, account_id: str, offset: int) -> None:
        self._at[account_id] = offset
        self._latest = max(self._latest, offset)

    def discard(self, account_id: str) -> None:
        self._at.pop(account_id, None)

    def since(self, offset: int) -> list[str]:
        """The accounts a tick at ``offset`` or later changed, in order of account id."""
        if offset > self._latest:
            return []
        return sorted(account for account, at in self._at.items() if at >= offset)
