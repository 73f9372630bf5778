"""What the benchmark holds the project against: the same work done by plain clients, and what Faust
alone costs.

- ``raw_loop``: one aiokafka consumer reads the preloaded card-event topics from their start
  (``getmany``), decodes each message with the project's codec, builds an accrual record from it
  (1% of the billing amount, rounded down, pending), encodes it (schema ``accrual``) and appends
  it, keyed by the account, to a producer batch per fetched partition (``create_batch`` and
  ``send_batch``), sent to the same partition of a scratch topic of as many partitions: the one
  the account's key would choose, since the topics are co-partitioned. ``acks=all`` like the
  worker's producer. The clock runs from the first fetch to the last batch's acknowledgement. (A
  ``send`` per message measured 16,000-21,500 events/s here where batches do 26,000-30,000: the
  baseline is what a plain client does at its best, not at its simplest.)
- ``copy_baseline``: the rows the sink wrote, copied again with asyncpg's ``copy_records_to_table``,
  one COPY per table the sink writes (the ledger's entries, the purchases that earned nothing, the
  reconciliation items: ``SINK_TABLES``), the columns the sink writes, each into a scratch table made
  ``LIKE`` the real one ``INCLUDING ALL`` (its constraints, defaults and indexes; not its triggers).
  Only the COPYs are timed; the rows are read before. The sink's figure is over the same rows. The COPY
  runs ``COPY_PASSES`` times, into tables made anew each time, and the baseline is the median pass: one
  pass alone moved by half between two runs of the same code (64,734 and 99,458 rows/s), and three passes
  over the same rows in one run gave 76,345, 76,554 and 91,295 rows/s.
- ``faust_floor``: a bare Faust agent with the worker's own app that only counts the card events
  Faust hands it (``stream.localstack.bench_floor``): the most any Faust agent reads here, a
  bound on the worker's rate that no cut in the worker's own work per event lifts.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.codec import Codec
from stream.localstack import chaos_faults
from stream.localstack.bench_watch import BenchError, Window, busy_between, cpu_ticks
from stream.localstack.chaos_oracle import partitions
from stream.settings import Settings
from stream.store.staged_rows import ITEM_COLUMNS, LEDGER_COLUMNS, NOT_EARNED_COLUMNS
from topics.catalogue import Catalogue

RATE_BPS = 100  # the raw loop's one offer: 1%
# Every table the sink writes a row of per accrual record: the columns it writes, and the column
# that orders the rows as they were written.
SINK_TABLES = {
    "ledger_entries": (LEDGER_COLUMNS, "entry_seq"),
    "purchases_not_earned": (NOT_EARNED_COLUMNS, "history_seq"),
    "reconciliation_items": (ITEM_COLUMNS, "item_seq"),
}
COPY_PREFIX = "bench_copy_"  # the scratch tables: bench_copy_ledger_entries, ...
_FLOOR_LINE = re.compile(r'\{"events": .*\}')  # what stream.localstack.bench_floor prints


def accrual_of(event: dict[str, Any]) -> dict[str, Any]:
    """A pending accrual for ``event``, as the matcher's would look (record ``accrual``): every field
    set, as the matcher sets them, so the codec's compiled writer encodes it (a missing field would
    send each record down fastavro's slower path and understate the baseline)."""
    basis = event["billing_amount_minor"]
    amount = max(1, basis * RATE_BPS // 10_000)  # rounded down; an entry moves at least one minor unit
    return {
        "accrual_id": f"{event['event_id']}#0",
        "source_event_id": event["event_id"],
        "account_id": event["account_id"],
        "transaction_ref": event["transaction_ref"],
        "entry_kind": "PENDING_CREATED",
        "debit_book": "EXPENSE",
        "credit_book": "PENDING",
        "amount_minor": amount,
        "currency": event["billing_currency"],
        "reward_kind": "CASH",
        "offer_id": "bench-raw",
        "rule_version": 1,
        "beneficiary_id": None,
        "occurred_at": event["occurred_at"],
        "explanation": {
            "reason": "earned",
            "detail": f"1.00% of {basis} minor units of {event['billing_currency']} (rounded down)",
            "basis_minor": basis,
            "basis_currency": event["billing_currency"],
            "rate_bps": RATE_BPS,
            "rounding": "down",
            "carried_remainder": 0,
            "force_post": False,
        },
        "merchant_id": event["merchant_id"] or None,
        "purchase_ref": event["transaction_ref"],
        "sponsor_id": None,
    }


async def raw_loop(settings: Settings, catalogue: Catalogue, codec: Codec, expected: int) -> Window:
    """Consume, decode, build and encode an accrual, produce: ``expected`` card events (see module doc)."""
    bootstrap = settings.kafka_bootstrap_servers
    scratch = f"{settings.topic_prefix}bench-raw-accruals"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(scratch, catalogue.accruals.partitions, 1)])
    finally:
        await admin.close()
    subjects = {catalogue.authorizations.name: "authorization_event", catalogue.settlements.name: "settlement_event"}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4 * 1024 * 1024)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024)
    await consumer.start()
    await producer.start()
    try:
        tps = [tp for topic in subjects for tp in await partitions(bootstrap, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        done, idle_since, deliveries = 0, time.monotonic(), []
        started = time.monotonic()
        while done < expected:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=2000)
            if not fetched and time.monotonic() - idle_since > 30:
                raise BenchError(f"raw loop: nothing to read for 30 s at {done} of {expected}")
            for tp, records in fetched.items():
                idle_since = time.monotonic()
                subject, batch = subjects[tp.topic], producer.create_batch()
                for record in records:
                    _, event = codec.decode(record.value, expected_subject=subject)
                    value = codec.encode("accrual", accrual_of(event))
                    if batch.append(key=record.key, value=value, timestamp=None) is None:  # full: send it, start another
                        deliveries.append(await producer.send_batch(batch, scratch, partition=tp.partition))
                        batch = producer.create_batch()
                        batch.append(key=record.key, value=value, timestamp=None)
                    done += 1
                deliveries.append(await producer.send_batch(batch, scratch, partition=tp.partition))
        await asyncio.gather(*deliveries)
        return Window(done, time.monotonic() - started)
    finally:
        await producer.stop()
        await consumer.stop()


COPY_PASSES = 3  # COPY passes over the same rows; the baseline is their median (module doc)


async def copy_baseline(database_url: str, passes: int = COPY_PASSES) -> tuple[Window, dict[str, int], list[float]]:
    """The rows the sink wrote COPYed into scratch tables of the same definitions, ``passes`` times, each pass into
    tables made anew (see module doc): the median pass's window, how many rows each table gave, and every pass's
    rate in the order they ran."""
    connection = await asyncpg.connect(database_url)
    try:
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for table, (columns, order) in SINK_TABLES.items():
            rows[table] = [tuple(r) for r in await connection.fetch(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")]
        if not rows["ledger_entries"]:
            raise BenchError("COPY: the ledger is empty")
        counts = {table: len(found) for table, found in rows.items()}
        windows = []
        for _ in range(passes):
            for table in SINK_TABLES:
                await connection.execute(f"DROP TABLE IF EXISTS {COPY_PREFIX}{table}")
                await connection.execute(f"CREATE TABLE {COPY_PREFIX}{table} (LIKE {table} INCLUDING ALL)")
            started, ticks = time.perf_counter(), cpu_ticks()
            for table, (columns, _) in SINK_TABLES.items():
                if rows[table]:
                    await connection.copy_records_to_table(f"{COPY_PREFIX}{table}", records=rows[table], columns=columns)
            seconds, busy = time.perf_counter() - started, busy_between(ticks, cpu_ticks())
            windows.append(Window(sum(counts.values()), seconds, cores_busy=busy))
        median = sorted(windows, key=lambda window: window.seconds)[len(windows) // 2]
        return median, counts, [window.rate for window in windows]
    finally:
        await connection.close()


def faust_floor(
    env: Mapping[str, str], settings: Settings, catalogue: Catalogue, expected: int, data_dir: Path, limit_s: float = 600.0
) -> Window:
    """A bare Faust agent counting ``expected`` preloaded card events, in a process of its own started with the
    worker's environment ``env`` (``stream.localstack.bench_floor``), in a consumer group of its own, its
    data directory ``data_dir``."""
    probe = {
        **env,
        "WORKER_DATA_DIR": str(data_dir),
        "APP_ID": f"{settings.app_id}-floor",
        "FLOOR_TOPICS": ",".join((catalogue.authorizations.name, catalogue.settlements.name)),
        "FLOOR_EVENTS": str(expected),
    }
    command = [sys.executable, "-m", "stream.localstack.bench_floor"]
    try:
        done = subprocess.run(command, env=probe, cwd=chaos_faults.REPO_ROOT, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the bare Faust agent did not count {expected:,} events within {limit_s:.0f}s") from None
    found = _FLOOR_LINE.search(done.stdout)  # after the terminal codes Faust's worker writes
    if done.returncode != 0 or found is None:
        raise BenchError(f"the bare Faust agent exited {done.returncode}: {done.stdout[-500:]} {done.stderr[-2000:]}")
    measured = json.loads(found[0])
    return Window(measured["events"], measured["seconds"])
