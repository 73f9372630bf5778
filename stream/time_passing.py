"""Time passing in the worker (``stream.matcher``'s clock): each worker ticks time on the
co-partitioned clock topic for the partitions it owns; a tick read back applies everything due by
its time (``stream.core.lifecycle``: ends of return windows, expiries, expiry notices) to the
accounts of its partition, through the matcher's path for card events, and asks the payout run the
schedule has due (``PAYOUT_SCHEDULE``) of the accounts with cash.

A tick read again (the worker stopped before it was committed) re-sends the entries its internal
events made: the account's state keeps the tick's offset (``AccountState.ticked``), since those
events, decided already, are no longer due.

A tick is one message, and the card events read behind it wait while it is applied: a tick applies
the ``DUE_ACCOUNTS_PER_TICK`` accounts due earliest, and when more are due it sends itself again
(the same time, to its partition), so the rest is applied after the card events queued meanwhile.
A backlog of due accounts (a worker back after hours away, a replay of older events) then delays a
card event by one slice, not by the whole backlog. The tick is committed only once its sequel was
delivered; read again, it sends another, which finds only what is still due. A slice that leaves
as many accounts due as it found sends no sequel (the next tick tries again), so no loop of ticks
can run on accounts whose due events change nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from schemas.codec import DecodeError
from stream.core.lifecycle import due_events, is_time_event_id
from stream.core.payouts import latest_run_ms, run_id_at, would_pay
from stream.metrics import EVENTS_CONSUMED
from stream.outbox import Decided
from stream.payout_runs import run_record

if TYPE_CHECKING:
    from stream.agent_queue import Source
    from stream.matcher import Matcher

log = logging.getLogger(__name__)

# The most accounts one tick applies what is due to before the card events queued behind it (about
# a millisecond each when the account's state is read back from the local store).
DUE_ACCOUNTS_PER_TICK = 100


class TimePassing:
    """The clock of a worker's ``Matcher``: its ticks, what they make due, its scheduled payout runs."""

    def __init__(self, matcher: Matcher) -> None:
        self.matcher = matcher
        self.payout_schedule = matcher.settings.payout_schedule_minutes()  # PAYOUT_SCHEDULE: () when off
        self._payout_runs: dict[int, int] = {}  # partition -> the scheduled run last asked on it (epoch ms)

    async def handle_tick(self, source: Source) -> None:
        """Time passing for one partition: apply everything due by the tick's time
        (stream.core.lifecycle) to the accounts of that partition, through the same path as card events."""
        m = self.matcher
        try:
            _, record = m.codec.decode(source.value, expected_subject="clock_tick")
        except DecodeError as error:
            await m.send_dead_letter(error.failure.value, error.detail, source)
            return
        now_ms = int(record["now"].timestamp() * 1000)
        await self._resend_ticked(source.partition, source.offset)
        due = m.accounts.due(source.partition, now_ms)
        for account_id in due[:DUE_ACCOUNTS_PER_TICK]:
            for event in due_events(m.accounts.get(account_id), account_id, now_ms):
                await m.apply(event, m.accounts.get(account_id), None, ticked=source.offset)
        if len(due) > DUE_ACCOUNTS_PER_TICK:
            left = len(m.accounts.due(source.partition, now_ms))
            if left < len(due):  # the rest after the card events read meanwhile: the same tick again
                m.keep_delivery(await m.sends.send(m.topics.clock.name, source.key, source.value, source.partition))
            else:  # never a loop of ticks that change nothing: the next tick tries again
                log.warning("clock[%d]: %d accounts stay due once what was due was applied", source.partition, left)
        await self.scheduled_payouts(source.partition, now_ms)
        EVENTS_CONSUMED.labels("CLOCK_TICK", "applied").inc()

    async def _resend_ticked(self, partition: int, offset: int) -> None:
        """A tick read again (the worker stopped after the changelog had the states it changed, and
        before it was committed): send again the entries of the internal events among the recent
        events of every account a tick at or after it changed. Those events are decided already, so
        the tick finds nothing due for them; their entries may never have been delivered (a crash
        between the changelog's acknowledgement and the entries' delivery). Duplicates downstream are
        free (the ledger and the notifications' readers take an id once); a first reading of a tick
        finds no account (every tick recorded is older)."""
        m = self.matcher
        accounts = m.accounts.ticked_since(partition, offset)
        if not accounts or m.current is None:
            return
        resent = 0
        for account_id in accounts:
            state = m.accounts.get(account_id)
            if state is None:
                continue
            entries = tuple(e for event_id, recent in state.recent.items() if is_time_event_id(event_id) for e in recent.entries)
            if not entries:
                continue
            await m.outbox.room_for(account_id)
            m.inputs.still_owned()
            language = m.account_profiles.get(account_id).language
            m.outbox.batch.decided(m.current, Decided(account_id, entries, False, False, (), language))
            resent += len(entries)
        log.warning(
            "clock[%d] offset %d read again: %d entries of time passing sent again for %d accounts",
            partition,
            offset,
            resent,
            len(accounts),
        )

    async def scheduled_payouts(self, partition: int, now_ms: int) -> None:
        """The payout run due by ``now_ms`` (PAYOUT_SCHEDULE), once per partition and run: a ``payout_run``
        message for every account of the partition whose wallet holds cash at or above a minimum, published
        on the payout-runs topic (the partition's own), where the worker reads it back like the command's
        (``stream.payout_runs``). Published, not decided here: an input message is redelivered after a crash,
        so its entries and its payout instruction are sent again (a duplicate re-emits them), where an event
        made by the tick and decided before the crash would find nothing due again and leave them unsent.
        The run's id is its scheduled time (``2026-12-03T0200Z``), the same on every worker: an account
        decides it once (its event id), whoever asks. After a start, the latest run is asked again of the
        accounts with cash (those that decided it: a duplicate; the others are paid by it: a run missed
        while down)."""
        m = self.matcher
        at_ms = latest_run_ms(self.payout_schedule, now_ms)
        if at_ms is None or self._payout_runs.get(partition) == at_ms:
            return
        at = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
        minimums, default = m.settings.payout_minimums_by_currency()
        topic = m.topics.payout_runs.name
        for account_id in m.accounts.with_cash(partition):
            if would_pay(m.accounts.get(account_id), minimums, default):
                value = m.codec.encode("payout_run", run_record(m.settings, run_id_at(at), account_id, at))
                await m.sends.send(topic, account_id.encode(), value, partition)
        self._payout_runs[partition] = at_ms

    async def send_ticks(self) -> None:
        """Tick time for the partitions this worker owns."""
        m = self.matcher
        now = datetime.now(UTC)
        for tp in m.app.consumer.assignment():
            if tp.topic == m.topics.authorizations.name:
                value = m.codec.encode("clock_tick", {"partition": tp.partition, "now": now})
                await m.clock.send(key=str(tp.partition).encode(), value=value, partition=tp.partition, force=True)
