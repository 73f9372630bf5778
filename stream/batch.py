"""The matcher's batch: the messages processed since its last flush, with the decisions whose entries
wait for the states to be on the changelog, and the decisions per account whose entries are sent but
not yet known to be delivered.

A flush (``stream.matcher``) waits once for the changelog to acknowledge every state the batch
wrote, then sends the batch's entries and accounts for its messages, instead of one changelog round
trip per event.

How much may wait: a worker killed after an account's state reached the changelog and before that
decision's entries were delivered restarts with decisions whose entries never left. A redelivered
event re-emits its entries only while it is among its account's last ``RECENT_EVENTS_LIMIT``
decisions (``stream.core.memory``), so an account never has more than that many decisions whose
entries are staged or undelivered (``room``); an account's entries share a partition, so they are
delivered in order.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stream.core.entries import Entry


@dataclass(slots=True)
class Decided:
    """One decision whose entries wait for the flush."""

    account_id: str
    entries: tuple[Entry, ...]
    stored: bool  # it changed the state (a redelivery's entries are sent again, nothing stored)
    counted: bool  # its entries count in the cashback metrics (not a redelivery's)


@dataclass(slots=True)
class Staged:
    """One input message of the batch: where it was read, the sends made for it so far (dead
    letters; its entries once flushed), and its decisions waiting for the flush."""

    tp: Any
    offset: int
    deliveries: list[Any] = field(default_factory=list)
    decisions: list[Decided] = field(default_factory=list)
    complete: bool = False  # processed to the end (a flush in its middle keeps it for the next)


class Batch:
    """The messages processed since the last flush, in order."""

    def __init__(self) -> None:
        self.messages: list[Staged] = []
        self._staged: Counter[str] = Counter()  # account -> its decisions that stored a state

    def __len__(self) -> int:
        return len(self.messages)

    def start(self, tp: Any, offset: int) -> Staged:
        staged = Staged(tp, offset)
        self.messages.append(staged)
        return staged

    def keep(self, staged: Staged) -> None:
        """Carry a message still being processed into this batch."""
        self.messages.append(staged)

    def decided(self, staged: Staged, decision: Decided) -> None:
        staged.decisions.append(decision)
        if decision.stored:
            self._staged[decision.account_id] += 1

    def drop(self, staged: Staged) -> None:
        """A message left to its partition's next owner: nothing of it is sent or accounted for."""
        self.messages.remove(staged)
        for decision in staged.decisions:
            if decision.stored:
                self._staged[decision.account_id] -= 1

    def staged(self, account_id: str) -> int:
        return self._staged[account_id]

    def accounts(self) -> set[str]:
        return {decision.account_id for staged in self.messages for decision in staged.decisions}

    def partitions(self) -> set[Any]:
        return {staged.tp for staged in self.messages}


class InFlightDecisions:
    """Per account, the decisions whose entries were sent and are not yet known to be delivered,
    oldest first (a failed delivery counts as done: its offset is read again, stream.progress)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_account: dict[str, deque[list[Any]]] = {}

    def add(self, account_id: str, sends: Iterable[Any]) -> None:
        """One decision's sends (awaitable delivery futures)."""
        self._by_account.setdefault(account_id, deque()).append([send for send in sends if send is not None])

    def count(self, account_id: str) -> int:
        decisions = self._by_account.get(account_id)
        if decisions is None:
            return 0
        while decisions and all(send.done() for send in decisions[0]):
            decisions.popleft()
        if not decisions:
            del self._by_account[account_id]
            return 0
        return len(decisions)

    async def wait_for_one(self, account_id: str) -> None:
        """Return once the account's oldest undelivered decision is delivered."""
        decisions = self._by_account.get(account_id)
        if decisions:
            await asyncio.wait(decisions[0])
        self.count(account_id)
