"""Which input offsets the matcher has accounted for, per partition: the project's own answer to
"what may be committed", instead of Faust's acks.

Why not Faust's acks (see the README, "Nothing lost"): Faust treats any jump in the offsets it
fetched as a compaction gap and counts the skipped offsets as acknowledged, and its recovery can
drop messages it fetched while restoring tables (faust-streaming #596, #606). Both commit past
messages no agent ever saw. Here an offset is committable only when every offset below it, from
the group's committed offset on, has been processed (decided or dead-lettered).

The protocol, per partition, for the agent:

- ``start(tp, offset)`` after an assignment, with the group's committed offset (or the log start);
- ``verdict(tp, offset)`` for each message before processing it:
  - ``PROCESS``: the next offset; process it, then ``done(tp, offset, deliveries)`` with the
    futures of the sends it made;
  - ``SKIP``: already processed (a redelivery), or a stale message buffered before a seek;
  - ``SEEK``: a hole below this message; seek the consumer to ``next_offset(tp)`` and drop the
    message: it comes again after the hole is filled;
  - ``CHECK_HOLE``: the re-read after the seek starts past the hole again: ask the broker whether
    the hole holds records and say so with ``hole_checked(tp, offset, empty)``, which answers
    ``PROCESS`` (no record there: compaction, transaction markers) or ``SEEK`` (the consumer
    dropped them again). A hole is never accepted on the consumer's word: Faust's fetch loop
    drops re-read messages below its own read position, which made a first version of this
    protocol skip a clearing in the chaos run.
- ``committable(tp)``: the offset to commit (the next one to process, or the first one whose sends
  are not known to be delivered), None when nothing new;
- ``stalled(tp, end_offset, busy, on_its_way)`` now and then: where to read again, after a send
  that failed or when a partition below its end does not move (a hole with no later message to
  reveal it, a partition left paused, records the consumer handed on and Faust dropped): at the
  second call, unless the agent is busy and the partition's next message is on its way (not yet
  handed on by the consumer, or waiting in the agent's queue), which ``waits`` asks about first.

Pure bookkeeping: no Kafka, no clock. Replaying is free downstream (effects are idempotent), so
every doubt resolves to "read again".
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter, deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# The calls of ``stalled`` a partition below its end may go without moving while the agent is busy
# and the partition's next message is on its way, before it is read again all the same. Behind a
# backlog the consumer hands on one partition after another (Faust pauses a partition whose messages
# fill the agent's queue, aiokafka hands on a partition's whole fetch before the next): in the
# benchmark's drains, partitions waited 40 to 75 s before their first message reached the agent.
# The bound is for a consumer that says it will hand a message on and never does.
BACKSTOP_WATCHES = 60
# The accounts whose delivered decisions ``InFlightDecisions`` remembers until their next batch (the
# most recently delivered first kept): an account gone quiet past them keeps its recent events' entries
# until its later decisions push them out of the window.
DELIVERED_ACCOUNTS = 65_536


class Delivery(Protocol):
    """A send's outcome, as an asyncio future gives it."""

    def done(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def exception(self) -> BaseException | None: ...


class Verdict(enum.Enum):
    PROCESS = "process"
    SKIP = "skip"
    SEEK = "seek"
    CHECK_HOLE = "check_hole"


@dataclass
class _Partition:
    next_offset: int  # every offset below it is accounted for
    committed: int  # what the group has committed (the next offset it would read)
    seeking_since: int | None = None  # the highest offset seen since we sought back, if seeking
    watched: int | None = None  # next_offset at the previous watch
    unmoved: int = 0  # the watches since then at which it had not moved
    # Processed offsets whose sends are not yet known to be delivered, oldest first.
    unconfirmed: deque[tuple[int, Sequence[Any]]] = field(default_factory=deque)
    rewind_to: int | None = None  # a send failed: read again from here


class InputProgress:
    """Accounted-for offsets of the partitions this worker owns, keyed by topic-partition."""

    def __init__(self) -> None:
        self._partitions: dict[Hashable, _Partition] = {}
        self.seeks = 0  # holes found below a message: sought back to read them
        self.gaps_accepted = 0  # holes that were real (no record there)

    def knows(self, tp: Hashable) -> bool:
        return tp in self._partitions

    def start(self, tp: Hashable, committed: int) -> None:
        """The group will deliver ``tp`` from ``committed`` on (its committed offset or log start)."""
        self._partitions[tp] = _Partition(next_offset=committed, committed=committed)

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Partitions revoked: the next owner (perhaps us again) starts from the committed offset."""
        for tp in tps:
            self._partitions.pop(tp, None)

    def partitions(self) -> list[Hashable]:
        return list(self._partitions)

    def next_offset(self, tp: Hashable) -> int:
        return self._partitions[tp].next_offset

    def verdict(self, tp: Hashable, offset: int) -> Verdict:
        part = self._partitions[tp]
        if offset < part.next_offset:
            return Verdict.SKIP
        if offset == part.next_offset:
            part.seeking_since = None
            return Verdict.PROCESS
        # A hole [next_offset, offset).
        if part.seeking_since is None:
            part.seeking_since = offset
            self.seeks += 1
            return Verdict.SEEK
        if offset > part.seeking_since:  # still draining what was buffered before the seek
            part.seeking_since = offset
            return Verdict.SKIP
        # The stream went back (the re-read after the seek) and it starts past the hole again:
        # either the hole holds no record, or the consumer dropped it once more. Only the broker
        # can tell (``hole_checked``).
        return Verdict.CHECK_HOLE

    def hole_checked(self, tp: Hashable, offset: int, empty: bool) -> Verdict:
        """The broker's answer for the hole below ``offset`` (after ``CHECK_HOLE``): ``PROCESS``
        the message when the hole holds no record, otherwise ``SEEK`` again."""
        part = self._partitions[tp]
        if empty:
            part.seeking_since = None
            self.gaps_accepted += 1
            return Verdict.PROCESS
        part.seeking_since = offset
        self.seeks += 1
        return Verdict.SEEK

    def past_empty_tail(self, tp: Hashable, offset: int, end_offset: int) -> None:
        """Offsets [``offset``, ``end_offset``) at the partition's end hold no record the consumer
        delivers (the broker said so): a transactional producer's commit or abort markers, or what
        it aborted. Accounted for as a hole without a record, so the partition is at its end: its
        lag is 0, and the watch no longer reads it again and again. Nothing if it moved meanwhile."""
        part = self._partitions.get(tp)
        if part is not None and part.next_offset == offset < end_offset:
            part.next_offset = end_offset
            part.watched, part.unmoved, part.seeking_since = None, 0, None
            self.gaps_accepted += 1

    def done(self, tp: Hashable, offset: int, deliveries: Sequence[Delivery] = ()) -> None:
        """``offset`` was processed: its effects were handed to the producer, and ``deliveries``
        say when they arrive. It is committable once every one of them succeeded."""
        part = self._partitions.get(tp)
        if part is None:  # revoked meanwhile: the next owner reads it again
            return
        if deliveries:
            part.unconfirmed.append((offset, deliveries))
        part.next_offset = max(part.next_offset, offset + 1)

    def read_again(self, tp: Hashable, offset: int) -> int | None:
        """The offsets from ``offset`` on were processed and then dropped before any of their sends:
        the partition goes back to ``offset`` (a message above it is a hole: sought back). Returns
        where to read from, None when nothing was accounted for there (not ours, or not reached)."""
        part = self._partitions.get(tp)
        if part is None or offset >= part.next_offset:
            return None
        part.next_offset = max(offset, part.committed)
        while part.unconfirmed and part.unconfirmed[-1][0] >= offset:
            part.unconfirmed.pop()
        part.seeking_since = None
        return part.next_offset

    def waits(self, tp: Hashable, end_offset: int) -> bool:
        """Whether the partition is below its end and has not moved since the previous call of
        ``stalled``: then ``stalled`` wants to know whether its next message is on its way."""
        part = self._partitions.get(tp)
        return part is not None and part.rewind_to is None and part.watched == part.next_offset < end_offset

    def stalled(self, tp: Hashable, end_offset: int, busy: bool = False, on_its_way: bool = False) -> int | None:
        """Called periodically with the partition's end offset: where to read again after a send
        that failed, or when records exist past ``next_offset`` and it has not moved since the
        previous call (a message lost with nothing after it to reveal the hole, a partition left
        paused, records handed on and dropped); None when all is well. ``busy``: the agent
        processed messages since the previous call; ``on_its_way``: the partition's next message
        has not been handed on by the consumer yet, or waits in the agent's queue. A busy agent
        with the message on its way is only behind other partitions: the partition is then read
        again only once it has not moved for ``BACKSTOP_WATCHES`` calls."""
        part = self._partitions.get(tp)
        if part is None:
            return None
        if part.rewind_to is not None:  # a send failed: everything from it again (idempotent)
            offset, part.rewind_to = part.rewind_to, None
            part.next_offset = max(offset, part.committed)
            part.unconfirmed.clear()
            part.seeking_since = None
            self.seeks += 1
            return part.next_offset
        if part.next_offset >= end_offset:  # all read
            part.watched, part.unmoved = None, 0
            return None
        if part.watched != part.next_offset:  # it moved (or is watched for the first time)
            part.watched, part.unmoved = part.next_offset, 0
            return None
        part.unmoved += 1
        if busy and on_its_way and part.unmoved < BACKSTOP_WATCHES:
            return None
        part.watched, part.unmoved = None, 0
        part.seeking_since = None
        self.seeks += 1
        return part.next_offset

    def committable(self, tp: Hashable) -> int | None:
        """The offset to commit for ``tp`` (None: nothing new, or not ours): the next offset to
        process, or the first one whose sends are not known to be delivered. A send that failed
        asks for its offset to be read again (``stalled`` returns it)."""
        part = self._partitions.get(tp)
        if part is None:
            return None
        bound = part.next_offset
        while part.unconfirmed:
            offset, deliveries = part.unconfirmed[0]
            if not all(d.done() for d in deliveries):
                bound = offset
                break
            if any(d.cancelled() or d.exception() is not None for d in deliveries):
                bound = offset
                part.rewind_to = offset if part.rewind_to is None else min(part.rewind_to, offset)
                break
            part.unconfirmed.popleft()
        return bound if bound > part.committed else None

    def committed(self, tp: Hashable, offset: int) -> None:
        part = self._partitions.get(tp)
        if part is not None:
            part.committed = max(part.committed, offset)


class InFlightDecisions:
    """The decisions whose entries were sent and are not yet known to be delivered, oldest first,
    and how many of them each account has (a failed delivery counts as done: its offset is read
    again: ``InputProgress``). Only undelivered decisions are held: the oldest are let go as they
    are delivered, whatever their account, so an account that never comes back holds nothing.

    Why a limit per account: the matcher stores an account's state before its entries are
    delivered, so a worker killed in between restarts with decisions whose entries never left. A
    redelivered event re-emits its entries only while it is among its account's last
    ``RECENT_EVENTS_LIMIT`` decisions (stream.core.memory); a limit no higher keeps every
    undelivered decision among them (an account's entries share a partition, so they are
    delivered in order). It is checked when a batch's states are about to be stored
    (``make_room``), not as each decision is made: the decisions of the batch before are
    delivered meanwhile, most often, instead of each hot account's next decision waiting for
    them.

    And which events' decisions were delivered whole (``delivered``): their entries need no longer
    be kept for a redelivery, and leave the account's recent events when it is next stored."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._decisions: deque[tuple[str, list[Any], str | None]] = deque()
        self._counts: Counter[str] = Counter()
        self._delivered: dict[str, list[str]] = {}  # account -> its events whose decisions were delivered

    def add(self, account_id: str, sends: Iterable[Any], event_id: str | None = None) -> None:
        """One decision's sends (awaitable delivery futures), of the event ``event_id``."""
        self._decisions.append((account_id, [send for send in sends if send is not None], event_id))
        self._counts[account_id] += 1

    def delivered(self, account_id: str) -> list[str]:
        """The events of the account whose decisions were delivered since the last call, every send
        of each acknowledged (a decision with a failed or cancelled send is not among them: its
        offset is read again, and its entries sent again from its account's recent events). Their
        entries need not be kept for a redelivery any longer (``AccountStates.hand_over``). Only
        the last ``DELIVERED_ACCOUNTS`` accounts' are remembered: an account forgotten keeps its
        recent events longer, never shorter."""
        self._let_go_delivered()
        return self._delivered.pop(account_id, [])

    def count(self, account_id: str) -> int:
        """The account's decisions not known to be delivered (counting any held behind an older
        undelivered one of another account: never fewer than there are)."""
        self._let_go_delivered()
        return self._counts[account_id]

    async def make_room(self, staged: Mapping[str, int]) -> None:
        """Wait until each account's undelivered decisions and its ``staged`` ones (about to be
        stored) are at most ``limit``: then its stored state keeps every undelivered decision of the
        account among its recent events. Its oldest are waited for; a batch flushed after the one
        before it was delivered waits for nothing."""
        for account_id, count in staged.items():
            while count and self.count(account_id) + count > self.limit:
                await self.wait_for_one()

    async def wait_for_one(self) -> None:
        """Return once the oldest undelivered decision is delivered."""
        self._let_go_delivered()
        if self._decisions:
            await asyncio.wait(self._decisions[0][1])
        self._let_go_delivered()

    def __len__(self) -> int:
        return len(self._decisions)

    def _let_go_delivered(self) -> None:
        while self._decisions and all(send.done() for send in self._decisions[0][1]):
            account_id, sends, event_id = self._decisions.popleft()
            self._counts[account_id] -= 1
            if not self._counts[account_id]:
                del self._counts[account_id]
            if event_id is not None and not any(send.cancelled() or send.exception() is not None for send in sends):
                held = self._delivered.get(account_id)
                if held is None:
                    if len(self._delivered) >= DELIVERED_ACCOUNTS:
                        del self._delivered[next(iter(self._delivered))]
                    held = self._delivered[account_id] = []
                held.append(event_id)


class Flushed:
    """A delivery (``InputProgress``) that is done when the message's batch was flushed (``stream.outbox``): its
    offset is never committed before its entries were even sent. A dropped batch fails it, and the
    offset is read again."""

    __slots__ = ("_done", "_error")

    def __init__(self) -> None:
        self._done = False
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return self._error

    def succeed(self) -> None:
        self._done = True

    def fail(self, error: BaseException) -> None:
        if not self._done:
            self._done, self._error = True, error
