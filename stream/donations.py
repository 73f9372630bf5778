"""Donation remittance runs (issue 12, part 1): customers' donations gathered per charity and currency from the
ledger into payout instructions for the bank's core banking system (``<prefix>donation-payouts``, keyed by charity
id), by ``cashback donations remit`` or DONATION_SCHEDULE (run by the sink process).

A run, in order (``remit``):

1. **record** (``stream.store.payouts.record_remittances``): in one transaction, under an advisory lock that makes
   runs take turns whichever process runs them, read what the ledger says each charity was given and what earlier
   remittances not rejected sent (``stream.core.donations`` decides), and insert a row per remittance in the payouts
   table, id ``d:<run id>:<charity>:<currency>``. Two runs never send the same money twice: the second reads the
   first's rows. The same run id again records nothing new (its ids are held);
2. **publish** every remittance recorded and not yet acknowledged, this run's and any earlier run's (a process
   that died between 1 and 2 left its rows unpublished: the next run, or the schedule's next round, sends them),
   and wait for the broker to have them all;
3. mark them published. A crash between 2 and 3 sends them again: at least once, idempotent by payout id (the
   bank pays each id once).

The answers (``<prefix>donation-payout-results``) are read by the sink's answers consumer
(``stream.payout_answers``): a rejection stops counting as sent, so the amount is owed again at the next run.

The schedule (DONATION_SCHEDULE, HH:MM UTC times; off by default) runs in the sink process: every
``POLL_S`` it runs each time of day passed since its last look, with run id ``2026-12-03T0200Z`` (the same
from every process: a second sink finds the run's ids held and nothing owed), and publishes what is unpublished.
A time passed while no sink ran is not made up for: the next run remits what is owed then, which includes it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
from aiokafka.errors import KafkaError

from schemas.codec import Codec
from stream.core.payouts import run_id_at
from stream.metrics import DONATION_REMITTANCES
from stream.producing import send_once
from stream.settings import Settings
from stream.store import payouts as store
from topics.catalogue import Topic, account_partition

log = logging.getLogger(__name__)

POLL_S = 30.0


class RemitReport(msgspec.Struct, frozen=True):
    run_id: str
    recorded: int  # remittances this run recorded
    published: int  # instructions sent (this run's, and any left unpublished before)
    amounts: dict[str, int]  # recorded per currency, minor units


def instruction(row: asyncpg.Record) -> dict[str, object]:
    """A recorded remittance as its ``donation_instruction`` record."""
    return {
        "payout_id": row["payout_id"],
        "charity_id": row["charity_id"],
        "amount_minor": row["amount_minor"],
        "currency": row["currency"],
        "run_id": row["run_id"],
        "requested_at": row["requested_at"],
    }


async def publish_pending(connection: asyncpg.Connection, settings: Settings, codec: Codec, topic: Topic) -> int:
    """Steps 2 and 3: every recorded, unanswered remittance not yet acknowledged, sent and marked; how many."""
    rows = await store.unpublished(connection)
    if not rows:
        return 0
    messages = [
        (
            topic.name,
            row["charity_id"].encode(),
            codec.encode("donation_instruction", instruction(row)),
            account_partition(row["charity_id"], topic.partitions),
        )
        for row in rows
    ]
    await send_once(settings, messages)
    await store.mark_published(connection, [row["payout_id"] for row in rows])
    return len(rows)


async def remit(settings: Settings, codec: Codec, topic: Topic, run_id: str, at: datetime) -> RemitReport:
    """One remittance run (module doc)."""
    named, default = settings.payout_minimums_by_currency()
    connection = await asyncpg.connect(settings.database_url, timeout=30)
    try:
        recorded = await store.record_remittances(connection, run_id, at, named, default)
        published = await publish_pending(connection, settings, codec, topic)
    finally:
        await connection.close()
    amounts: dict[str, int] = {}
    for remittance in recorded:
        amounts[remittance.currency] = amounts.get(remittance.currency, 0) + remittance.amount_minor
        DONATION_REMITTANCES.inc()
    return RemitReport(run_id, len(recorded), published, amounts)


def due(schedule: tuple[int, ...], after: datetime, until: datetime) -> list[datetime]:
    """The scheduled times (minutes after midnight UTC) in ``(after, until]``, in order."""
    out: list[datetime] = []
    day = after.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    while day <= until and schedule:
        out.extend(at for m in schedule if after < (at := day + timedelta(minutes=m)) <= until)
        day += timedelta(days=1)
    return out


class DonationSchedule:
    """DONATION_SCHEDULE's runs, in a long-running process (the sink), until cancelled."""

    def __init__(self, settings: Settings, codec: Codec, topic: Topic, schedule: tuple[int, ...]) -> None:
        self.settings, self.codec, self.topic, self.schedule = settings, codec, topic, schedule

    async def run(self) -> None:
        last = datetime.now(UTC)
        while True:
            await asyncio.sleep(POLL_S)
            now = datetime.now(UTC)
            try:
                runs = due(self.schedule, last, now)
                for at in runs:
                    report = await remit(self.settings, self.codec, self.topic, run_id_at(at), at)
                    log.info("donation remittance run %s: %d recorded, %d sent", report.run_id, report.recorded, report.published)
                if not runs:
                    await self._publish_left()
                last = now
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, KafkaError) as error:
                log.warning("donation remittance round failed, tried again in %.0f s (%s)", POLL_S, type(error).__name__)

    async def _publish_left(self) -> None:
        connection = await asyncpg.connect(self.settings.database_url, timeout=30)
        try:
            sent = await publish_pending(connection, self.settings, self.codec, self.topic)
        finally:
            await connection.close()
        if sent:
            log.info("donation remittances left unpublished sent again: %d", sent)
