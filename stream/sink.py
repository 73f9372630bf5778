"""The sink: accruals topic -> Postgres ledger and balances, in batches.

Order of one batch (the checkpoint order; never change it without changing the tests that pin it):

1. fetch up to ``sink_batch_size`` accruals (``getmany``);
2. decode them and make their rows for the journal (``stream.store.staged_rows.stage``); undecodable ones are sent to
   the dead-letter topic and the send is awaited;
3. write the batch in ONE database transaction (entries unique by account and accrual id,
   balances from the rows actually inserted; an entry whose id the account's ledger holds with
   other content is recorded in ledger_conflicts, not written, and dead-lettered after the
   commit); Postgres unreachable -> retry with backoff, forever, blocking: the offsets do not
   move while the ledger is behind;
4. only then commit the consumer offsets.

A crash anywhere before 4 redelivers the batch; step 3 makes the replay a no-op. A row Postgres
refuses (a constraint: a bug upstream) is isolated by splitting the batch and dead-lettered alone.

Steps 1 and 2 of the next batch run while step 3 of this one waits for Postgres (at most one
transaction in flight), so decoding and writing overlap; each batch's own order is the one above,
and offsets are still committed batch after batch, each only after its own transaction. A batch's
step 4 runs while the next batch's step 3 does: Postgres is handed the next transaction as soon as
it has committed one, not after a round trip to the broker and the next fetch.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import operator
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from schemas.codec import Codec, DecodeError
from stream.core.abuse import RULE_NAMES
from stream.core.entries import ITEM_KINDS
from stream.deadletter import OtherReason, Stage, send_dead_letter
from stream.kafka_clients import closing, start_client
from stream.metrics import (
    CONSUMER_LAG,
    HOLD_REVIEWS,
    HOLDS,
    RECONCILIATION_ITEMS,
    SINK_BATCH_SECONDS,
    SINK_BATCH_SIZE,
    SINK_ENTRIES,
    SINK_RETRIES,
    observe_ledger_latency,
)
from stream.producing import producer as make_producer
from stream.settings import Settings
from stream.store.availability import KeptConnection, StopRequested, until_postgres_answers
from stream.store.journal import BatchResult, write_batch
from stream.store.staged_rows import STAGING_COLUMNS, Staged, stage
from topics.catalogue import SOURCE_TIME_HEADER, Catalogue

log = logging.getLogger(__name__)

_JSON = msgspec.json.Encoder()
# Messages decoded between two yields to the event loop while the previous batch is written: each of its round
# trips (BEGIN, COPY, INSERT, COMMIT) goes out as soon as Postgres answers, not a slice of decoding later, and the
# consumer's next fetch is read meanwhile (32: about 0.6 ms of decoding; a yield costs a few microseconds).
_DECODE_SLICE = 32
_FETCH_SLICE = 500  # accruals unpacked by one getmany of a batch (``Sink._fetch``)
_REFUSED = (asyncpg.exceptions.IntegrityConstraintViolationError, asyncpg.exceptions.DataError)


# The fields accrual v3 appended (merchant_id, purchase_ref): an entry that sets neither is its version 2 bytes
# followed by two zero bytes (each union's null branch). Its fingerprint is that of the version 2 bytes, so the
# same entry sent before the upgrade (re-emitted after it from the account's recent events) is no conflict.
# Version 4 appended only an entry-kind symbol (RECONCILIATION): every entry of version 3 has the same bytes in
# version 4, so the rule holds for every version that has these fields (``appending_ids``), not only the newest.
_APPENDED_IN_V3 = ("merchant_id", "purchase_ref")


def appending_ids(codec: Codec) -> frozenset[int]:
    """The schema ids of the accrual versions that have ``_APPENDED_IN_V3`` (version 3 and later)."""
    return codec.schema_ids("accrual", having_field=_APPENDED_IN_V3[-1])


# Version 6 appended sponsor_id, by the same rule: an entry with no sponsor (bank-funded) is its version 5 bytes
# followed by one zero byte, and has their fingerprint; with no merchant and no purchase ref either, version 2's.
_APPENDED_IN_V6 = "sponsor_id"


def sponsoring_ids(codec: Codec) -> frozenset[int]:
    """The schema ids of the accrual versions that have ``_APPENDED_IN_V6`` (version 6 and later)."""
    return codec.schema_ids("accrual", having_field=_APPENDED_IN_V6)


# The record's fields that begin a staging row, in ``STAGING_COLUMNS`` order (after the position, up to
# occurred_at): one C call, the sink's hot path.
_LEADING = operator.itemgetter(*STAGING_COLUMNS[1 : STAGING_COLUMNS.index("occurred_at") + 1])


def staging_row(
    position: int,
    record: dict[str, Any],
    raw: bytes,
    appending_ids: frozenset[int] = frozenset(),
    sponsoring_ids: frozenset[int] = frozenset(),
) -> tuple[Any, ...]:
    """One decoded accrual as a staging row (``STAGING_COLUMNS`` order). ``appending_ids``: the schema ids of
    the accrual versions that have ``_APPENDED_IN_V3`` (``appending_ids``); ``sponsoring_ids``: of those that
    have ``_APPENDED_IN_V6`` (``sponsoring_ids``)."""
    get = record.get
    merchant_id, purchase_ref, sponsor_id = get("merchant_id"), get("purchase_ref"), get("sponsor_id")
    end = len(raw)
    schema_id = int.from_bytes(raw[1:5], "big")
    trailing = sponsor_id is None or schema_id not in sponsoring_ids  # nothing set after version 3's fields
    if sponsor_id is None and schema_id in sponsoring_ids:
        end -= 1
    if trailing and merchant_id is None and purchase_ref is None and schema_id in appending_ids:
        end -= len(_APPENDED_IN_V3)
    leading = _LEADING(record)
    if not isinstance(leading[-1], datetime):
        raise TypeError("occurred_at must be decoded as a datetime")
    return (
        position,
        *leading,
        _JSON.encode(record["explanation"]).decode(),  # msgspec: a sixth of json.dumps's time, the same jsonb
        hashlib.blake2b(raw[5:end], digest_size=12).hexdigest(),  # the bytes after the header
        get("beneficiary_id"),
        merchant_id,
        purchase_ref,
        sponsor_id,
    )


def source_time_ms(message: ConsumerRecord) -> int:
    """When the card event (or clock tick) behind an accrual reached the broker: its
    ``SOURCE_TIME_HEADER``, which the workers set; the accrual's own timestamp when the header is
    missing or not a number (an accrual from an older worker)."""
    for name, value in message.headers or ():
        if name == SOURCE_TIME_HEADER and value is not None and 0 < len(value) <= 15 and value.isdigit():
            return int(value)
    return int(message.timestamp)


def count_holds(holds: Sequence[str]) -> None:
    """The metrics of the abuse controls, from a batch's new entries into HELD and out of it by review."""
    for hold in holds:
        kind, _, rule = hold.partition(":")
        rule = rule if rule in RULE_NAMES else "other"  # a closed set of labels, whatever an entry says
        if kind == "HOLD_RELEASED":
            HOLD_REVIEWS.labels(rule, "released").inc()
        elif kind == "HOLD_FORFEITED":
            HOLD_REVIEWS.labels(rule, "forfeited").inc()
        else:
            HOLDS.labels(rule).inc()


def count_items(kinds: Sequence[str]) -> None:
    """The reconciliation items the ledger took in a batch (new rows only), by kind (a closed set): one increment
    per kind, not per item (a backlog's batch can hold a thousand)."""
    for kind, count in Counter(kinds).items():
        RECONCILIATION_ITEMS.labels(kind if kind in ITEM_KINDS else "other").inc(count)


class Sink:
    def __init__(self, settings: Settings, catalogue: Catalogue, codec: Codec) -> None:
        self.settings = settings
        self.topic = catalogue.accruals.name
        self.dead_letter_topic = catalogue.dead_letters.name
        self.codec = codec
        self._appending_ids = appending_ids(codec)  # accrual v3 and later (see staging_row)
        self._sponsoring_ids = sponsoring_ids(codec)  # accrual v6 and later (see staging_row)
        self._db = KeptConnection(settings.database_url)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        kafka = self.settings.kafka_client_options()
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            group_id=self.settings.sink_group_id,
            enable_auto_commit=False,  # offsets move only after the ledger commit (see module doc)
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=self.settings.sink_batch_size,
            **kafka,
        )
        producer = make_producer(self.settings)
        async with closing(consumer, producer, self._db.close):
            await start_client(producer)
            await start_client(consumer)
            await self._drain(consumer, producer)

    async def _drain(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        """Steps 1 to 4, batch after batch, until stopped."""
        # One batch is written while the next is fetched and decoded: the decoding (Python, this process) and
        # the write (Postgres) overlap. Each batch still goes 2 -> 3 -> 4 in order, and its offsets are committed
        # only after its own transaction, while the next one runs; at most one transaction is in flight.
        writing: tuple[asyncio.Task[None], dict[TopicPartition, list[ConsumerRecord]]] | None = None
        try:
            while not self._stopping.is_set():
                batches = await self._fetch(consumer)
                records = [r for part in batches.values() for r in part]
                decoded = await self._decode(records, producer) if records else None
                to_commit = None
                if writing is not None:
                    await writing[0]
                    to_commit, writing = writing[1], None
                if decoded is not None:
                    writing = (asyncio.create_task(self._write(*decoded, producer)), batches)
                    await asyncio.sleep(0)  # its BEGIN goes out now, not after the next fetch
                if to_commit is not None:
                    await self._commit(consumer, to_commit)  # while the next transaction runs
                await self._observe_lag(consumer)
            if writing is not None:
                await writing[0]
                await self._commit(consumer, writing[1])
                writing = None
        except StopRequested as stopped:  # a stop during an outage: the batch is the next sink's to write
            log.warning("%s: the batch is left to the next sink, its offsets not committed", stopped)
        finally:
            if writing is not None:  # left by an error: its transaction rolls back and its offsets never moved
                writing[0].cancel()
                await asyncio.gather(writing[0], return_exceptions=True)

    async def _fetch(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Step 1: up to ``sink_batch_size`` accruals, waiting ``sink_batch_wait_ms`` at most for the first, then what
        the consumer holds already. aiokafka unpacks the records a ``getmany`` returns in that call, about 2 µs each:
        taken ``_FETCH_SLICE`` at a time, with a turn of the event loop between, so that the batch being written
        is not kept waiting for Postgres's answers (a whole batch's at once was 20 ms)."""
        wanted, waited = self.settings.sink_batch_size, False
        batches: dict[TopicPartition, list[ConsumerRecord]] = {}
        while wanted > 0:
            taken = await consumer.getmany(
                timeout_ms=0 if waited else self.settings.sink_batch_wait_ms, max_records=min(wanted, _FETCH_SLICE)
            )
            if not taken:
                break
            waited = True
            for tp, records in taken.items():
                batches.setdefault(tp, []).extend(records)
                wanted -= len(records)
            await asyncio.sleep(0)
        return batches

    async def handle(self, records: Sequence[ConsumerRecord], producer: AIOKafkaProducer) -> None:
        """Steps 2 and 3 of the module doc for one fetched batch."""
        await self._write(*await self._decode(records, producer), producer)

    async def _decode(
        self, records: Sequence[ConsumerRecord], producer: AIOKafkaProducer
    ) -> tuple[Staged, list[ConsumerRecord], list[int]]:
        """Step 2: the batch's staging rows, made ready for the journal (``stage``: the Python work of the write done
        here, while the previous batch's transaction runs), their messages, and when each message's card event
        reached the broker (``source_time_ms``, for the latency observed at the commit); an undecodable message is
        dead-lettered."""
        rows: list[tuple[Any, ...]] = []
        sources: list[ConsumerRecord] = []
        times: list[int] = []
        # the loop is the sink's hot path
        decode, appending_ids, sponsoring_ids = self.codec.decode, self._appending_ids, self._sponsoring_ids
        for start in range(0, len(records), _DECODE_SLICE):
            if start:
                await asyncio.sleep(0)  # let the batch being written take its next round trip meanwhile
            for position in range(start, min(start + _DECODE_SLICE, len(records))):
                message = records[position]
                value = message.value
                try:
                    _, record = decode(value, expected_subject="accrual")
                    rows.append(staging_row(position, record, value, appending_ids, sponsoring_ids))
                    sources.append(message)
                    times.append(source_time_ms(message))
                except DecodeError as error:
                    await self._dead_letter(producer, message, error.failure.value, error.detail)
        await asyncio.sleep(0)  # as between slices: the batch being written answers Postgres before the staging
        return stage(rows), sources, times

    async def _write(self, staged: Staged, sources: list[ConsumerRecord], times: list[int], producer: AIOKafkaProducer) -> None:
        rows = staged.rows
        if not rows:
            return
        started = time.perf_counter()
        try:
            result = await self._with_retry(staged)
        except _REFUSED as error:
            if len(rows) == 1:
                log.error("ledger refused entry %s: %s", rows[0][1], type(error).__name__)
                await self._dead_letter(producer, sources[0], OtherReason.LEDGER_REJECTED.value, type(error).__name__)
                return
            middle = len(rows) // 2
            await self._write(stage(rows[:middle]), sources[:middle], times[:middle], producer)
            await self._write(stage(rows[middle:]), sources[middle:], times[middle:], producer)
            return
        SINK_BATCH_SECONDS.observe(time.perf_counter() - started)
        SINK_BATCH_SIZE.observe(len(rows))
        observe_ledger_latency(times, result.written)
        SINK_ENTRIES.labels("written").inc(result.written)
        SINK_ENTRIES.labels("duplicate").inc(result.duplicates)
        count_holds(result.holds)
        count_items(result.items)
        if result.conflicts:
            SINK_ENTRIES.labels("conflict").inc(len(result.conflicts))
            log.error(
                "%d ledger entries arrived with an id the ledger holds with other content: dead-lettered", len(result.conflicts)
            )
            by_position = {row[0]: source for row, source in zip(rows, sources, strict=True)}
            for position in result.conflicts:
                detail = "entry id held in the account's ledger with other content (see ledger_conflicts)"
                await self._dead_letter(producer, by_position[position], OtherReason.LEDGER_CONFLICT.value, detail)

    async def _with_retry(self, staged: Staged) -> BatchResult:
        """Write the batch, waiting for Postgres as long as it takes (step 3)."""

        async def attempt() -> BatchResult:
            return await write_batch(await self._db.get(), staged)

        async def outage(_: BaseException) -> None:
            SINK_RETRIES.inc()
            await self._drop_connection()

        return await until_postgres_answers(attempt, "the sink's batch", outage, self._stopping)

    async def _drop_connection(self) -> None:
        self._db.drop()

    async def _dead_letter(self, producer: AIOKafkaProducer, message: ConsumerRecord, reason: str, detail: str) -> None:
        await send_dead_letter(producer, self.codec, self.dead_letter_topic, Stage.SINK, message, reason, detail)

    async def _commit(self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        offsets = {tp: records[-1].offset + 1 for tp, records in batches.items() if records}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as error:
            # A rebalance took the partitions: the new owner redelivers, and the ledger ignores the replay.
            log.info("offset commit skipped after a rebalance: %s", type(error).__name__)

    async def _observe_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                position = await consumer.position(tp)
                CONSUMER_LAG.labels(self.settings.sink_group_id, tp.topic, str(tp.partition)).set(max(0, highwater - position))
