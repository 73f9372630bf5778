"""The sink's batch loop against the real Postgres, with a scripted consumer: the next batch is
decoded while this one is written, and a batch's offsets are committed while the next one is written,
yet each batch's offsets move only after its own transaction, one transaction in flight;
and the journal looks a batch's ids up in the ledger by index, whatever the ledger's size."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiokafka import ConsumerRecord, TopicPartition

from schemas.codec import Codec
from stream.core.entries import moves_money
from stream.settings import Settings
from stream.sink import Sink
from stream.store import journal
from stream.store.journal import BatchResult, write_batch
from stream.store.migrations import migrate
from stream.store.staged_rows import Staged
from tests.integration.conftest import fresh_database
from tests.integration.test_ledger import rows_of, simulated_entries
from topics.catalogue import catalogue

CODEC = Codec()
TOPIC = catalogue().accruals.name


@pytest.fixture()
def database(postgres_url: str) -> str:
    return fresh_database(postgres_url)


class ScriptedConsumer:
    """Hands out the given batches as aiokafka's ``getmany`` does a fetch: a call that may wait (``timeout_ms`` above 0)
    with nothing held fetches the next batch, and every call returns at most ``max_records`` of what is held, a call
    that may not wait nothing when nothing is; then stops the sink. Records what happens."""

    def __init__(self, sink: Sink, batches: list[list[ConsumerRecord]], log: list[str]) -> None:
        self.sink, self.batches, self.log = sink, batches, log
        self.fetched = 0
        self.held: list[ConsumerRecord] = []
        self.committed: dict[TopicPartition, int] = {}

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[ConsumerRecord]]:
        if not self.held and timeout_ms > 0:
            if self.fetched == len(self.batches):
                self.sink.stop()
                return {}
            self.held = list(self.batches[self.fetched])
            self.fetched += 1
            self.log.append(f"fetched {self.fetched}")
        taken, self.held = self.held[:max_records], self.held[max_records:]
        by_partition: dict[TopicPartition, list[ConsumerRecord]] = {}
        for record in taken:
            by_partition.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
        return by_partition

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.log.append(f"committed {max(offsets.values())}")
        self.committed.update(offsets)

    def assignment(self) -> set[TopicPartition]:
        return set()


class Producer:
    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        raise AssertionError("nothing here is dead-lettered")


def batches_of(entries: list[dict[str, Any]], size: int) -> list[list[ConsumerRecord]]:
    records = [
        ConsumerRecord(TOPIC, 0, offset, 0, 0, e["account_id"].encode(), CODEC.encode("accrual", e), None, 0, 0, [])
        for offset, e in enumerate(entries)
    ]
    return [records[start : start + size] for start in range(0, len(records), size)]


def test_the_next_batch_is_decoded_while_this_one_is_written_and_offsets_follow_each_commit(database: str) -> None:
    entries = simulated_entries(purchases=60, seed=11)
    batches = batches_of(entries, 40)
    assert len(batches) >= 3
    log: list[str] = []
    sink = Sink(Settings.from_env({"DATABASE_URL": database}), catalogue(), CODEC)
    consumer = ScriptedConsumer(sink, batches, log)
    write = sink._with_retry

    async def gated_write(staged: Staged) -> BatchResult:
        number = sum(1 for line in log if line.startswith("writing")) + 1
        log.append(f"writing {number}")
        if number < len(batches):  # hold the write until the next batch was fetched: they overlap, or this hangs
            while f"fetched {number + 1}" not in log:
                await asyncio.sleep(0.01)
        result = await write(staged)
        log.append(f"written {number}")
        return result

    sink._with_retry = gated_write  # type: ignore[method-assign]

    async def scenario() -> int:
        connection = await asyncpg.connect(database)
        await migrate(connection)
        try:
            await asyncio.wait_for(sink._drain(consumer, Producer()), 60)  # type: ignore[arg-type]
            return int(await connection.fetchval("SELECT count(*) FROM ledger_entries"))
        finally:
            await connection.close()
            await sink._drop_connection()

    ledger = asyncio.run(scenario())
    assert ledger == sum(1 for e in entries if moves_money(e["entry_kind"]))
    for number, batch in enumerate(batches, start=1):
        commit = log.index(f"committed {batch[-1].offset + 1}")
        assert log.index(f"written {number}") < commit  # offsets only after the batch's own transaction
        if number < len(batches):
            assert log.index(f"fetched {number + 1}") < log.index(f"written {number}")  # overlapped
            assert log.index(f"written {number}") < log.index(f"writing {number + 1}")  # one transaction in flight
            assert log.index(f"writing {number + 1}") < commit  # the offsets move while the next batch is written
            assert commit < log.index(f"committed {batches[number][-1].offset + 1}")  # and in order
    assert consumer.committed == {TopicPartition(TOPIC, 0): batches[-1][-1].offset + 1}


def test_a_batch_that_fails_to_write_moves_no_offset(database: str) -> None:
    batches = batches_of(simulated_entries(purchases=30, seed=12), 30)[:2]
    log: list[str] = []
    sink = Sink(Settings.from_env({"DATABASE_URL": database}), catalogue(), CODEC)
    consumer = ScriptedConsumer(sink, batches, log)
    write = sink._with_retry

    writes: list[int] = []

    async def failing_second(staged: Staged) -> BatchResult:
        writes.append(len(staged.rows))
        if len(writes) == 2:
            raise RuntimeError("the second batch fails")
        return await write(staged)

    sink._with_retry = failing_second  # type: ignore[method-assign]

    async def scenario() -> None:
        connection = await asyncpg.connect(database)
        await migrate(connection)
        await connection.close()
        try:
            await sink._drain(consumer, Producer())  # type: ignore[arg-type]
        finally:
            await sink._drop_connection()

    with pytest.raises(RuntimeError, match="second batch"):
        asyncio.run(scenario())
    assert consumer.committed == {TopicPartition(TOPIC, 0): batches[0][-1].offset + 1}


def test_the_look_up_probes_the_ledger_by_index_never_scans_it(database: str) -> None:
    entries = simulated_entries(purchases=200, seed=13)
    rows = rows_of(entries)

    async def scenario() -> tuple[str, str]:
        connection = await asyncpg.connect(database)
        try:
            await migrate(connection)
            await write_batch(connection, rows)  # the ledger and the refusals hold rows
            await connection.execute("ANALYZE ledger_entries; ANALYZE purchases_not_earned")
            keys = [[row[3] for row in rows], [row[1] for row in rows]]
            plan = await connection.fetch("EXPLAIN (COSTS OFF) " + journal._LOOK_UP, *keys)
            replay = await write_batch(connection, rows)
            assert (replay.written, replay.duplicates, replay.conflicts) == (
                0,
                sum(1 for e in entries if moves_money(e["entry_kind"])),
                (),
            )
            return "\n".join(line[0] for line in plan), await connection.fetchval("SHOW plan_cache_mode")
        finally:
            await connection.close()

    plan, plan_cache_mode = asyncio.run(scenario())
    # per incoming row, an index probe into the ledger (a page or two of refusals may be read whole: cheaper)
    assert "Index Scan using ledger_entries_account_accrual on ledger_entries" in plan
    assert "Seq Scan on ledger_entries" not in plan
    # and no plan made once for the tables' sizes then: the journal's statements are planned for their sizes now
    assert plan_cache_mode == "force_custom_plan"


def test_a_batch_is_fetched_in_slices_waiting_only_for_the_first() -> None:
    """``Sink._fetch``: up to ``sink_batch_size`` records, taken a slice at a time (aiokafka unpacks what a ``getmany``
    returns in that call), each partition's in order, and only the first call may wait."""
    sink = Sink(Settings.from_env({"SINK_BATCH_SIZE": "1200", "SINK_BATCH_WAIT_MS": "250"}), catalogue(), CODEC)
    held = [ConsumerRecord(TOPIC, offset % 2, offset, 0, 0, b"k", b"v", None, 1, 1, []) for offset in range(2_000)]
    calls: list[tuple[int, int, int]] = []

    class Consumer:
        async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[ConsumerRecord]]:
            nonlocal held
            taken, held = held[:max_records], held[max_records:]
            calls.append((timeout_ms, max_records, len(taken)))
            by_partition: dict[TopicPartition, list[ConsumerRecord]] = {}
            for record in taken:
                by_partition.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
            return by_partition

    batch = asyncio.run(sink._fetch(Consumer()))  # type: ignore[arg-type]
    assert sum(len(records) for records in batch.values()) == 1_200
    for tp, records in batch.items():
        assert [r.offset for r in records] == [o for o in range(1_200) if o % 2 == tp.partition]
    assert calls == [(250, 500, 500), (0, 500, 500), (0, 200, 200)]

    calls.clear()  # 800 left: taken whole, then a call that may not wait finds nothing and ends the batch
    assert sum(len(records) for records in asyncio.run(sink._fetch(Consumer())).values()) == 800  # type: ignore[arg-type]
    assert calls == [(250, 500, 500), (0, 500, 300), (0, 400, 0)]
