"""The matcher's outbox: the batch of messages processed since the last flush, with the decisions
whose entries wait for the states to be on the changelog, and the decisions per account whose
entries are sent but not yet known to be delivered.

A flush hands the batch's states to the table (one summary per account: ``stream.account_states``),
waits once for the changelog to acknowledge them, then sends the batch's entries and accounts for
its messages, instead of one changelog round trip per event. A rebalance during the batch drops it
(its messages are read again): its states would otherwise reach the changelog after the partitions'
next owner started reading it.

How much may wait: a worker killed after an account's state reached the changelog and before that
decision's entries were delivered restarts with decisions whose entries never left. A redelivered
event re-emits its entries only while it is among its account's last ``RECENT_EVENTS_LIMIT``
decisions (``stream.core.memory``), so an account never has more than that many decisions staged
in the batch or with entries undelivered (``room_for``); an account's entries share a partition, so
they are delivered in order. Staged decisions count with entries or not (the batch's one summary of
an account names every decision of the batch among its recent events: the changelog keeps the order
they were decided in), and so does a redelivery of one of its recent events, entries or not (``Decided.in_flight``:
after a restart nothing says which left, and each holds its place in the window as when it was decided).
Events of earlier batches delivered leave the summary (``InFlightDecisions.delivered``).

Payout instructions (``stream.core.payouts``) leave the same way, right after the PAID_OUT entries
that move their cash (made from those entries: a redelivered run re-emits them, and asks again under
the same payout id), keyed by account on the payouts topic, their deliveries counted before the commit.

Customer notifications (``stream.core.notices``) leave with the entries that cause them, by the
same path: after the changelog has the batch's states, each decision's entries, then its
notifications (the entries that tell the customer something, and the engine's expiry notices),
keyed by account on the notifications topic, in the account's language. Their deliveries join the
message's like the entries' (``Staged.deliveries``, ``InFlightDecisions``), so an offset is
committed only once its notifications were delivered too: at least once, and a repeat (a
redelivered event re-emits its entries) carries the same notification ids.

A flush first records the batch's campaign-budget grants (``stream.granting.BatchGrants``), before
anything of the batch leaves. Refused (another worker took the budget meanwhile), nothing of the batch
is kept: its tables' changes and its accounts' states are forgotten, and its messages are read
again from the first of each partition (``BatchDropped``); a message in the middle of its
processing stops there.

After a restart, a state read back names recent events whose delivery no one knew; when the batch's
new events push such an event out of its account's window before its message was read again (the
other input topic late), its entries are sent again and delivered before the state that drops it is
stored (``_deliver_leaving``), since a later redelivery finds it decided with nothing to send.

A flush's records (entries, payout instructions, notifications) are gathered a batch per topic and
partition and handed to the producer together once all are made, in that order of topics
(``stream.producing.Batches``): one delivery per batch, which every message with a record in it
waits for, instead of one per record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.codec import Codec
from stream.account_states import AccountStates
from stream.changelog_table import ChangelogTable, Sends
from stream.core.entries import Entry
from stream.core.notices import DEFAULT_LANGUAGE, Notice, from_entry, from_notice, language_of
from stream.core.payouts import orders_of
from stream.granting import BatchGrants, GrantsRefused
from stream.input_partitions import InputPartitions, PartitionRevoked
from stream.metrics import (
    ACCRUALS,
    CASHBACK_AMOUNT,
    EVENTS_CONSUMED,
    NOTIFICATIONS,
    PAYOUTS,
    WORKER_BATCH_SIZE,
    WORKER_FLUSH_SECONDS,
    labelled,
)
from stream.producing import Gathering
from stream.progress import Flushed, InFlightDecisions
from topics.catalogue import SOURCE_TIME_HEADER, account_partition

log = logging.getLogger(__name__)

LINGER_POLL_S = 0.001  # how often a lingering batch looks for a new message


class BatchDropped(Exception):
    """The batch was dropped (its budget grants refused): its messages are read again, and the
    one being processed stops, deciding nothing more."""


@dataclass(slots=True)
class Decided:
    """One decision whose entries wait for the flush."""

    account_id: str
    entries: tuple[Entry, ...]
    placed: bool  # it holds a place among its account's recent events: it stored a state, or is a redelivery of one
    counted: bool  # its entries count in the cashback metrics (not a redelivery's)
    notices: tuple[Notice, ...] = ()  # the engine's expiry and paid notices (stream.core.notices)
    language: str | None = None  # the account's notifications' language (None: the worker's default)
    event_id: str | None = None  # the event decided (None: entries sent again for time passing)

    @property
    def in_flight(self) -> bool:
        """Whether it counts in its account's room until delivered (module doc): it holds a place, or re-sends entries."""
        return self.placed or bool(self.entries)


def _source_time(timestamp_s: float | None) -> list[tuple[str, bytes]] | None:
    """The accruals' header naming their input's broker timestamp (``topics.catalogue.SOURCE_TIME_HEADER``)."""
    if timestamp_s is None or timestamp_s <= 0:
        return None
    return [(SOURCE_TIME_HEADER, str(round(timestamp_s * 1000)).encode())]


@dataclass(slots=True)
class Staged:
    """One input message of the batch: where it was read, its deliveries (that its batch was
    flushed, the sends made for it: dead letters, and its entries once flushed), and its decisions
    waiting for the flush."""

    tp: Any
    offset: int
    timestamp_s: float | None = None  # its broker timestamp: its accruals carry it (SOURCE_TIME_HEADER)
    flushed: Flushed = field(default_factory=Flushed)
    deliveries: list[Any] = field(default_factory=list)
    decisions: list[Decided] = field(default_factory=list)
    outcomes: list[tuple[str, str]] = field(default_factory=list)  # its events' (type, outcome), counted at the flush
    complete: bool = False  # processed to the end (a flush in its middle keeps it for the next)

    def __post_init__(self) -> None:
        self.deliveries.append(self.flushed)


class Batch:
    """The messages processed since the last flush, in order; the rebalance count at its first (``InputPartitions``)."""

    def __init__(self) -> None:
        self.messages: list[Staged] = []
        self._staged: Counter[str] = Counter()  # account -> its decisions that count in its room (Decided.in_flight)
        self.rebalances: int | None = None
        self.opened = time.monotonic()  # when its first message started

    def __len__(self) -> int:
        return len(self.messages)

    def start(self, tp: Any, offset: int, timestamp_s: float | None = None) -> Staged:
        if not self.messages:
            self.opened = time.monotonic()
        staged = Staged(tp, offset, timestamp_s)
        self.messages.append(staged)
        return staged

    def keep(self, staged: Staged) -> None:
        """Carry a message still being processed into this batch."""
        self.messages.append(staged)

    def decided(self, staged: Staged, decision: Decided) -> None:
        staged.decisions.append(decision)
        if decision.in_flight:
            self._staged[decision.account_id] += 1

    def drop(self, staged: Staged, error: BaseException) -> None:
        """A message left to be read again: nothing of it is sent, and its offset is not committed."""
        staged.flushed.fail(error)
        if staged not in self.messages:  # a flush in its middle dropped the batch already
            return
        self.messages.remove(staged)
        for decision in staged.decisions:
            if decision.in_flight:
                self._staged[decision.account_id] -= 1

    def staged(self, account_id: str) -> int:
        return self._staged[account_id]

    def staged_counts(self) -> Mapping[str, int]:
        """Each account's decisions that count in its room (``Decided.in_flight``; none: absent, or 0)."""
        return self._staged

    def accounts(self) -> set[str]:
        return {decision.account_id for staged in self.messages for decision in staged.decisions}

    def partitions(self) -> set[Any]:
        return {staged.tp for staged in self.messages}


class Outbox:
    """The batch, and what leaves it at a flush: the states first, then the entries. A message is
    accounted for as soon as it is processed (``stream.progress``: the next one of its partition may
    follow in the same batch); its offset is committable once its batch was flushed and its sends
    were delivered (``Flushed``)."""

    def __init__(
        self,
        tables: Iterable[ChangelogTable],
        sends: Sends,
        accruals: str,
        codec: Codec,
        inputs: InputPartitions,
        accounts: AccountStates,
        limit: int,
        dropped: Callable[[], None] = lambda: None,
        notifications: str | None = None,
        language: str = DEFAULT_LANGUAGE,
        languages: Callable[[str], str | None] = lambda account_id: None,
        payouts: str | None = None,
        grants: BatchGrants | None = None,
    ) -> None:
        """``dropped``: called when a batch's writes are dropped, for what was read from them;
        ``notifications``: the notifications topic's name (None: none sent); ``language``: theirs
        for an account whose profile names none; ``languages``: an account's profile's (for entries
        sent again outside a decision: ``_deliver_leaving``); ``payouts``: the payout instructions'
        topic (None: none sent); ``grants``: the batch's budget grants, recorded before anything of
        it leaves (None: no budget is ever granted)."""
        self.tables = tuple(tables)
        self.sends = sends
        self.accruals = accruals  # the accruals topic's name
        self.notifications = notifications
        self.language = language
        self.languages = languages
        self.payouts = payouts
        self.codec = codec
        self.inputs = inputs
        self.accounts = accounts
        self.dropped = dropped
        self.batch = Batch()
        self.in_flight = InFlightDecisions(limit)
        self.grants = grants

    def start(self, tp: Any, offset: int, timestamp_s: float | None = None) -> Staged:
        """A message starts to be processed, in the current batch (``timestamp_s``: its broker
        timestamp, which its accruals carry to the sink)."""
        if self.batch.rebalances is None:
            self.batch.rebalances = self.inputs.rebalances
        return self.batch.start(tp, offset, timestamp_s)

    async def room_for(self, account_id: str) -> None:
        """Flush the batch first when it holds ``limit`` decisions of the account: one summary names
        at most that many (its recent events). Its earlier decisions still undelivered are waited
        for at the flush, not here (``InFlightDecisions.make_room``)."""
        if self.batch.staged(account_id) >= self.in_flight.limit:
            await self.flush()

    async def linger(self, buffered: Any, wait_s: float) -> None:
        """Give the stream until the batch is ``wait_s`` old to bring more messages, while it holds
        none (``buffered``: its queue). Faust hands the agent one message per turn of the event loop,
        so the stream is empty between most messages even on a backlog: flushing then would cost a
        changelog round trip per message or two."""
        deadline = self.batch.opened + wait_s
        while buffered.empty() and time.monotonic() < deadline:
            await asyncio.sleep(LINGER_POLL_S)

    async def flush(self) -> None:
        """The batch's states on the changelog (one wait for all of them, once each account's earlier
        decisions still undelivered leave room for them: ``InFlightDecisions.make_room``), then its
        entries sent, then its messages accounted for (their offsets committed once their sends are
        delivered).
        A rebalance since the batch started, or a partition lost while a refused changelog write
        was retried, drops the whole batch: its messages are read again, by this worker or the
        partition's next owner."""
        started = time.perf_counter()
        await self.settle_grants(batch_ends=True)
        await self.in_flight.make_room(self.batch.staged_counts())  # before the states that push them out of the window
        batch, self.batch = self.batch, Batch()
        partitions = batch.partitions()

        def still_owned() -> None:
            self.inputs.still_owned(partitions, since=batch.rebalances)

        written = self.accounts.hand_over(self.in_flight.delivered)
        try:
            await self._deliver_leaving()
            for table in self.tables:
                await table.settle(still_owned)
        except PartitionRevoked as revoked:
            log.info("partitions %s revoked while the batch's states were written: left to be read again", partitions)
            self.accounts.forget_accounts(written)
            self.dropped()
            for staged in batch.messages:
                staged.flushed.fail(revoked)
            return
        except BaseException:  # the agent fails (its messages are read again): nothing of it is kept
            self.accounts.forget_accounts(written)
            self.dropped()
            raise
        # Every record of the batch's decisions gathered a batch per topic and partition, then handed over
        # together: the entries first, then the payout instructions they make, then the notifications.
        outgoing = self.sends.batches((self.accruals, *(t for t in (self.payouts, self.notifications) if t)))
        for staged in batch.messages:
            for decided in staged.decisions:
                await self._send_entries(staged, decided, outgoing)
        await outgoing.send()
        outcomes: Counter[tuple[str, str]] = Counter()
        for staged in batch.messages:
            outcomes.update(staged.outcomes)
            staged.outcomes.clear()
        for (event_type, outcome), count in outcomes.items():
            labelled(EVENTS_CONSUMED, event_type, outcome).inc(count)
        for staged in batch.messages:
            staged.decisions.clear()
            if staged.complete:
                staged.flushed.succeed()
            else:
                self.batch.keep(staged)  # a flush in the middle of a clock tick: the tick goes on
        WORKER_BATCH_SIZE.observe(len(batch.messages))
        WORKER_FLUSH_SECONDS.observe(time.perf_counter() - started)

    async def settle_grants(self, batch_ends: bool = False) -> None:
        """Record the batch's budget grants (``batch_ends``: at its flush). Refused, the batch is
        dropped: its tables' changes and its accounts' states forgotten, its messages read again
        from the first of each partition (raises BatchDropped)."""
        if self.grants is None:
            return
        try:
            await self.grants.settle(batch_ends)
        except GrantsRefused as refused:
            batch, self.batch = self.batch, Batch()
            log.info("budget grants of a batch of %d messages refused (%s): read again", len(batch), refused)
            for table in self.tables:
                table.discard_unsettled()
            self.accounts.drop_pending()
            self.accounts.forget({staged.tp.partition for staged in batch.messages})
            self.dropped()
            for staged in batch.messages:
                staged.flushed.fail(refused)
            await self.inputs.read_again((staged.tp, staged.offset) for staged in batch.messages)
            raise BatchDropped(str(refused)) from refused

    async def _deliver_leaving(self) -> None:
        """Send again, and wait for, the entries of recent events the states about to be stored drop
        with no delivery known (``AccountStates.leaving``; the ledger takes a repeat as a replay)."""
        leaving, self.accounts.leaving = self.accounts.leaving, []
        if leaving:
            log.info(
                "entries of %d recent events of %d accounts sent again before the states that drop them are stored "
                "(pushed out of their windows before they were read again after a restart)",
                len(leaving),
                len({account_id for account_id, _ in leaving}),
            )
            outgoing = self.sends.batches((self.accruals, *(t for t in (self.payouts, self.notifications) if t)))
            for account_id, entries in leaving:
                again = Decided(account_id, entries, False, False, language=self.languages(account_id))
                await self._send_entries(Staged(None, -1), again, outgoing)
            await asyncio.gather(*await outgoing.send())

    async def _send_entries(self, staged: Staged, decided: Decided, outgoing: Gathering) -> None:
        account_key = decided.account_id.encode()
        # The account's partition of the co-partitioned output topics, given to the producer: its
        # own partitioner would work out the same murmur2 again for each record, in Python.
        partition = account_partition(decided.account_id, self.accounts.partitions)
        headers = _source_time(staged.timestamp_s)
        sends = []
        for entry in decided.entries:
            # Into the flush's batch of the account's partition (keyed by account), handed to the producer
            # with the others once all are made; Faust still flushes the producer before committing the
            # input offsets, so at-least-once holds.
            value = self.codec.encode("accrual", entry.record())
            sends.append(await outgoing.add(self.accruals, account_key, value, partition, headers))
            if decided.counted:
                labelled(ACCRUALS, entry.entry_kind, entry.reward_kind).inc()
                labelled(CASHBACK_AMOUNT, entry.entry_kind, entry.reward_kind, entry.currency).inc(entry.amount_minor)
        if self.payouts is not None:
            # After the entries that moved the cash to PAID_OUT: the bank is never asked for money the ledger
            # is not about to hold. A redelivered run re-emits its entries, so asks again: same payout id.
            for order in orders_of(decided.entries):
                value = self.codec.encode("payout_instruction", order.record())
                sends.append(await outgoing.add(self.payouts, account_key, value, partition, headers))
                if decided.counted:
                    PAYOUTS.labels("requested", order.currency).inc()
        if self.notifications is not None and (decided.entries or decided.notices):
            await self._notify(decided, account_key, partition, headers, sends, outgoing)
        sends = list(dict.fromkeys(send for send in sends if send is not None))  # a batch's delivery once
        staged.deliveries.extend(sends)
        if decided.in_flight:
            self.in_flight.add(decided.account_id, sends, decided.event_id)

    async def _notify(
        self,
        decided: Decided,
        account_key: bytes,
        partition: int,
        headers: list[tuple[str, bytes]] | None,
        sends: list[Any],
        outgoing: Gathering,
    ) -> None:
        """The decision's notifications, sent after its entries (their deliveries join ``sends``):
        one per entry that tells the customer something, one per expiry notice."""
        assert self.notifications is not None
        language = language_of(decided.language, self.language)
        made = [n for entry in decided.entries if (n := from_entry(entry, language)) is not None]
        made += [from_notice(notice, language) for notice in decided.notices]
        for notification in made:
            value = self.codec.encode("notification", notification.record())
            sends.append(await outgoing.add(self.notifications, account_key, value, partition, headers))
            if decided.counted:
                labelled(NOTIFICATIONS, notification.kind, language).inc()
