"""Charities' donations remitted, and every payout in the operators' payouts table, on the real broker and Postgres:
the ledger holds two accounts' donations to one charity (written by the sink's own write path), ``cashback donations
remit`` gathers them into one instruction on ``<prefix>donation-payouts`` (read with a plain client and fastavro, not
the project's codec), a repeated run sends nothing new, a rejection (answered by a plain client, read by the sink
process) makes the amount owed again, and a run that died between recording and publishing is published by the next.
Customers' payouts follow in the table from their PAID_OUT entries and their answers, in either order; the API lists
them for operations only; the gauges count the unanswered ones."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import fastavro
import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from schemas.codec import Codec
from stream.core.entries import Entry
from stream.store import payouts as store
from stream.store.journal import write_batch
from tests.factories import book, offer
from tests.integration.conftest import Processes, api_auth_env, free_port, fresh_database, records_of, wait_until
from tests.integration.test_api import _run
from tests.integration.test_end_to_end import publish
from tests.integration.test_payout_ledger import rows_of

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
IDS = json.loads((SCHEMAS / "ids.json").read_text())
INSTRUCTION = fastavro.parse_schema(json.loads((SCHEMAS / "donation_instruction.avsc").read_text()))
DONATION_RESULT = fastavro.parse_schema(json.loads((SCHEMAS / "donation_result.avsc").read_text()))
PAYOUT_RESULT = fastavro.parse_schema(json.loads((SCHEMAS / "payout_result.avsc").read_text()))

# Red Cross gets 10% of 50.00 from each donor's purchase; the return window (10 days) ends on day 11.
RED_CROSS = book(offer(offer_id="give-rc", reward_kind="CHARITY", charity_id="red-cross", rate_bps=1_000, pending_days=10))
DONATED = [("AUTHORIZATION", 5_000, 0), ("CLEARING", 5_000, 1), ("TIME", 12)]
PROMISED = [("AUTHORIZATION", 5_000, 0), ("CLEARING", 5_000, 1)]
CASH = book(offer(pending_days=0))  # 5% at supermarkets, AVAILABLE at the clearing


def write_entries(database: str, entries: list[Entry]) -> None:
    async def write() -> None:
        connection = await asyncpg.connect(database)
        try:
            await write_batch(connection, rows_of(entries))
        finally:
            await connection.close()

    asyncio.run(write())


def query(database: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    return [dict(row) for row in records_of(database, sql, *args)]


def payout_rows(database: str, kind: str) -> dict[str, tuple[Any, ...]]:
    rows = query(
        database,
        "SELECT payout_id, amount_minor, status, reason_code, published_at IS NOT NULL AS published FROM payouts"
        " WHERE beneficiary_kind = $1",
        kind,
    )
    return {r["payout_id"]: (r["amount_minor"], r["status"], r["reason_code"], r["published"]) for r in rows}


async def _read_all(bootstrap: str, topic: str) -> list[tuple[bytes, dict[str, Any]]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    found: list[tuple[bytes, dict[str, Any]]] = []
    try:
        for _ in range(6):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    assert record.value[:5] == struct.pack(">bI", 0, IDS["donation_instruction.avsc"])
                    found.append((record.key, fastavro.schemaless_reader(io.BytesIO(record.value[5:]), INSTRUCTION)))
    finally:
        await consumer.stop()
    return found


def answer(env: dict[str, str], topic: str, subject: str, key: str, record: dict[str, Any]) -> None:
    """The core banking system's answer, in the documented wire format, by a plain client."""
    schema = DONATION_RESULT if subject == "donation_result" else PAYOUT_RESULT
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, IDS[f"{subject}.avsc"]))
    fastavro.schemaless_writer(buffer, schema, record | {"answered_at": datetime.now(UTC)})
    asyncio.run(publish(env["KAFKA_BOOTSTRAP_SERVERS"], [(env["TOPIC_PREFIX"] + topic, key.encode(), buffer.getvalue())]))


def charity_answer(env: dict[str, str], pid: str, charity: str, status: str, reason: str | None = None) -> None:
    record = {"payout_id": pid, "charity_id": charity, "status": status, "reason_code": reason}
    answer(env, "donation-payout-results", "donation_result", charity, record)


def customer_answer(env: dict[str, str], pid: str, account: str, status: str, reason: str | None = None) -> None:
    record = {"payout_id": pid, "account_id": account, "status": status, "reason_code": reason}
    answer(env, "payout-results", "payout_result", account, record)


@contextmanager
def sink_stack(request: pytest.FixtureRequest, kafka_bootstrap: str, postgres_url: str, work_dir: Path) -> Iterator[Processes]:
    """A fresh database and topics, the sink process (it reads the answers), PAYOUT_MINIMUMS EUR=500."""
    log_dir = work_dir / f"donations-{uuid.uuid4().hex[:8]}"
    log_dir.mkdir()
    run = log_dir.name
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DATABASE_URL": fresh_database(postgres_url),
        "TOPIC_PREFIX": f"{run}.",
        "APP_ID": f"cashback-{run}",
        "SINK_GROUP_ID": f"cashback-sink-{run}",
        "SINK_BATCH_WAIT_MS": "50",
        "PAYOUT_MINIMUMS": "EUR=500",
        "PYTHONUNBUFFERED": "1",
        **api_auth_env(log_dir),
    }
    processes = Processes(env, log_dir)
    processes.cli("topics")
    processes.cli("migrate")
    processes.metrics_ports = {"sink": free_port()}
    processes.start("sink", "sink", env={"METRICS_PORT": str(processes.metrics_ports["sink"])})
    failed = request.session.testsfailed
    try:
        wait_until(lambda: _metrics_up(processes), 60, "the sink's metrics")
        yield processes
    finally:
        processes.stop_all()
        if request.session.testsfailed > failed:
            print(f"--- sink log (tail) ---\n{processes.log('sink')}")


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, kafka_bootstrap: str, postgres_url: str, work_dir: Path) -> Iterator[Processes]:
    with sink_stack(request, kafka_bootstrap, postgres_url, work_dir) as processes:
        yield processes


def _metrics_up(processes: Processes) -> bool:
    try:
        processes.metric("sink", "cashback_payout_answers_total")
    except httpx.HTTPError:
        return False
    return True


def remit(processes: Processes, run_id: str) -> str:
    return processes.cli("donations", "remit", "--run-id", run_id).strip()


def test_donations_of_two_accounts_are_remitted_once_and_a_rejection_makes_them_owed_again(stack: Processes) -> None:
    env, database = stack.env, stack.env["DATABASE_URL"]
    write_entries(
        database, _run("rc-1", RED_CROSS, DONATED) + _run("rc-2", RED_CROSS, DONATED) + _run("rc-3", RED_CROSS, PROMISED)
    )
    topic = env["TOPIC_PREFIX"] + "donation-payouts"

    out = remit(stack, "r1")
    assert out == "donation remittance run r1: 1 remittance(s) recorded (10.00 EUR), 1 sent"  # rc-3's 5.00 is promised only
    sent = asyncio.run(_read_all(env["KAFKA_BOOTSTRAP_SERVERS"], topic))
    assert [(key, {k: v for k, v in i.items() if k != "requested_at"}) for key, i in sent] == [
        (
            b"red-cross",
            {
                "payout_id": "d:r1:red-cross:EUR",
                "charity_id": "red-cross",
                "amount_minor": 1_000,
                "currency": "EUR",
                "run_id": "r1",
            },
        )
    ]
    assert payout_rows(database, "CHARITY") == {"d:r1:red-cross:EUR": (1_000, "REQUESTED", None, True)}

    # Asked again (another run id, the same run id): nothing new is owed, nothing is sent.
    assert remit(stack, "r2") == "donation remittance run r2: 0 remittance(s) recorded (nothing), 0 sent"
    assert remit(stack, "r1") == "donation remittance run r1: 0 remittance(s) recorded (nothing), 0 sent"
    assert len(asyncio.run(_read_all(env["KAFKA_BOOTSTRAP_SERVERS"], topic))) == 1

    # Rejected: owed again; the next run sends it again under its own id; a late confirmation changes nothing.
    charity_answer(env, "d:r1:red-cross:EUR", "red-cross", "REJECTED", "account_closed")
    wait_until(lambda: payout_rows(database, "CHARITY")["d:r1:red-cross:EUR"][1] == "REJECTED", 30, "the rejection in the table")
    charity_answer(env, "d:r1:red-cross:EUR", "red-cross", "CONFIRMED")
    assert remit(stack, "r3") == "donation remittance run r3: 1 remittance(s) recorded (10.00 EUR), 1 sent"
    charity_answer(env, "d:r3:red-cross:EUR", "red-cross", "CONFIRMED")
    wait_until(
        lambda: payout_rows(database, "CHARITY").get("d:r3:red-cross:EUR", (0, ""))[1] == "CONFIRMED", 30, "the confirmation"
    )
    assert payout_rows(database, "CHARITY") == {
        "d:r1:red-cross:EUR": (1_000, "REJECTED", "account_closed", True),  # the first answer stands
        "d:r3:red-cross:EUR": (1_000, "CONFIRMED", None, True),
    }
    assert remit(stack, "r4") == "donation remittance run r4: 0 remittance(s) recorded (nothing), 0 sent"

    # An answer naming no remittance of ours is dead-lettered by the sink, the table unchanged.
    charity_answer(env, "d:r9:red-cross:EUR", "red-cross", "CONFIRMED")
    unknown = {"stage": "sink", "reason": "unknown_payout"}
    wait_until(lambda: stack.metric("sink", "cashback_dead_letters_total", unknown) == 1, 30, "the unknown answer dead-lettered")
    assert set(payout_rows(database, "CHARITY")) == {"d:r1:red-cross:EUR", "d:r3:red-cross:EUR"}


def test_a_run_that_died_between_recording_and_publishing_is_published_by_the_next(stack: Processes) -> None:
    env, database = stack.env, stack.env["DATABASE_URL"]
    write_entries(
        database,
        _run(
            "uc-1",
            book(offer(offer_id="give-u", reward_kind="CHARITY", charity_id="unicef", rate_bps=2_000, pending_days=10)),
            DONATED,
        ),
    )
    topic = env["TOPIC_PREFIX"] + "donation-payouts"
    before = len(asyncio.run(_read_all(env["KAFKA_BOOTSTRAP_SERVERS"], topic)))

    async def record_only() -> list[Any]:  # step 1 of a run, then the process dies
        connection = await asyncpg.connect(database)
        try:
            return await store.record_remittances(connection, "died", datetime.now(UTC), {"EUR": 500}, None)
        finally:
            await connection.close()

    assert [(r.payout_id, r.amount_minor) for r in asyncio.run(record_only())] == [("d:died:unicef:EUR", 1_000)]
    assert payout_rows(database, "CHARITY")["d:died:unicef:EUR"] == (1_000, "REQUESTED", None, False)
    # The next run records nothing (the unicef money is counted as sent) and publishes the one left.
    assert remit(stack, "r5") == "donation remittance run r5: 0 remittance(s) recorded (nothing), 1 sent"
    sent = asyncio.run(_read_all(env["KAFKA_BOOTSTRAP_SERVERS"], topic))
    assert [i["payout_id"] for _, i in sent[before:]] == ["d:died:unicef:EUR"]
    assert payout_rows(database, "CHARITY")["d:died:unicef:EUR"][3] is True
    assert remit(stack, "r6").endswith("0 remittance(s) recorded (nothing), 0 sent")


def test_two_runs_at_once_never_send_the_same_money_twice(stack: Processes) -> None:
    database = stack.env["DATABASE_URL"]
    wwf = book(offer(offer_id="give-w", reward_kind="CHARITY", charity_id="wwf", rate_bps=1_000, pending_days=10))
    write_entries(database, _run("ww-1", wwf, DONATED))

    async def both() -> list[list[Any]]:
        connections = [await asyncpg.connect(database) for _ in range(2)]
        try:
            runs = [
                store.record_remittances(c, run, datetime.now(UTC), {"EUR": 500}, None)
                for c, run in zip(connections, ("at-once-1", "at-once-2"), strict=True)
            ]
            return list(await asyncio.gather(*runs))
        finally:
            for connection in connections:
                await connection.close()

    recorded = [r for run in asyncio.run(both()) for r in run if r.charity_id == "wwf"]
    assert [(r.charity_id, r.amount_minor) for r in recorded] == [("wwf", 500)]
    rows = query(database, "SELECT amount_minor FROM payouts WHERE beneficiary_id = 'wwf'")
    assert [r["amount_minor"] for r in rows] == [500]


def test_the_local_stacks_core_banking_stand_in_answers_charities_on_their_own_topic(kafka_bootstrap: str) -> None:
    from stream.composition import System
    from stream.localstack.core_banking import answer_for, serve

    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_PREFIX": f"standin-d-{uuid.uuid4().hex[:8]}."}
    system = System.from_env(env)
    asyncio.run(system.create_topics())
    topics, codec = system.catalogue, Codec()
    remittances = [
        {
            "payout_id": f"d:r1:charity-{n}:EUR",
            "charity_id": f"charity-{n}",
            "amount_minor": 1_000 + n,
            "currency": "EUR",
            "run_id": "r1",
            "requested_at": datetime(2026, 12, 3, 2, 0, tzinfo=UTC),
        }
        for n in range(20)
    ]
    messages = [
        (topics.donation_payouts.name, r["charity_id"].encode(), codec.encode("donation_instruction", r)) for r in remittances
    ]
    asyncio.run(publish(kafka_bootstrap, messages))

    async def read(topic: str) -> list[tuple[bytes, dict[str, Any]]]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        found: list[tuple[bytes, dict[str, Any]]] = []
        try:
            for _ in range(4):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [(r.key, codec.decode(r.value, expected_subject="donation_result")[1]) for r in records]
        finally:
            await consumer.stop()
        return found

    async def serve_until_answered() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(system.settings, codec, topics, stop, group_id="standin-d-test"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while loop.time() < deadline and len(await read(topics.donation_payout_results.name)) < 20:
            await asyncio.sleep(1.0)
        stop.set()
        return await task

    assert asyncio.run(serve_until_answered()) == 20
    answers = asyncio.run(read(topics.donation_payout_results.name))
    assert sorted((key.decode(), a["payout_id"], a["status"], a["reason_code"]) for key, a in answers) == sorted(
        (r["charity_id"], r["payout_id"], *answer_for(r["payout_id"])) for r in remittances
    )
    assert asyncio.run(read(topics.payout_results.name)) == []  # never on the customers' answers
