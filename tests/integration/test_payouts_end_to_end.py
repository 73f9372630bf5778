"""Cash payouts end to end on the real broker and Postgres: card events make cash AVAILABLE,
``cashback payouts run`` asks a run, a stand-in for the bank's core banking system (a plain aiokafka
client and fastavro, not the project's codec) reads the payout instructions and answers one REJECTED
and one CONFIRMED; the ledger and the API's balances and history show it. The same run asked again pays
nothing twice, and a worker restarted in between loses nothing: the next run pays the returned money.
A worker killed in the middle of a run pays each account once."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import fastavro
import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from stream.auth import ACCOUNTS_READ
from tests.factories import card_record
from tests.integration.conftest import REPO_ROOT, Processes, api_headers, rows_of, running_pipeline, wait_for_each, wait_until
from tests.integration.test_end_to_end import balance, notifications_of, publish, publish_records

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
IDS = json.loads((SCHEMAS / "ids.json").read_text())
INSTRUCTION = fastavro.parse_schema(json.loads((SCHEMAS / "payout_instruction.avsc").read_text()))
RESULT = fastavro.parse_schema(json.loads((SCHEMAS / "payout_result.avsc").read_text()))


def dining(account: str, amount: int) -> list[dict[str, Any]]:
    """A restaurant purchase, authorised and cleared: 3% of it AVAILABLE at once (offer dining-3-now)."""
    ref = f"{account}-ref"
    return [
        card_record(kind, amount, account_id=account, transaction_ref=ref, event_id=f"{account}-{kind}", mcc="5812")
        for kind in ("AUTHORIZATION", "CLEARING")
    ]


async def _read_all(bootstrap: str, topic: str, want: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    """What the core banking system reads: every payout instruction of the topic, decoded by hand,
    once there are ``want`` at least (and then every one published by then)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    found: list[dict[str, Any]] = []

    async def read() -> None:
        for records in (await consumer.getmany(timeout_ms=500)).values():
            for record in records:
                assert record.value[:5] == struct.pack(">bI", 0, IDS["payout_instruction.avsc"])
                instruction = fastavro.schemaless_reader(io.BytesIO(record.value[5:]), INSTRUCTION)
                assert record.key == instruction["account_id"].encode()
                found.append(instruction)

    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(found) < want and loop.time() < deadline:
            await read()
        ends = await consumer.end_offsets(list(consumer.assignment()))
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end] and loop.time() < deadline:
            await read()
    finally:
        await consumer.stop()
    return found


def instructions(env: dict[str, str], want: int) -> list[dict[str, Any]]:
    return asyncio.run(_read_all(env["KAFKA_BOOTSTRAP_SERVERS"], env["TOPIC_PREFIX"] + "payouts", want))


def answer(env: dict[str, str], payout: dict[str, Any], status: str, reason: str | None = None) -> None:
    """The core banking system's answer, in the documented wire format."""
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, IDS["payout_result.avsc"]))
    record = {
        "payout_id": payout["payout_id"],
        "account_id": payout["account_id"],
        "status": status,
        "reason_code": reason,
        "answered_at": datetime.now(UTC),
    }
    fastavro.schemaless_writer(buffer, RESULT, record)
    topic = env["TOPIC_PREFIX"] + "payout-results"
    asyncio.run(publish(env["KAFKA_BOOTSTRAP_SERVERS"], [(topic, payout["account_id"].encode(), buffer.getvalue())]))


def cash(base_url: str, account: str) -> tuple[int, int] | None:
    line = balance(base_url, account)
    return None if line is None else (line["available_minor"], line["paid_out_minor"])


def wait_cash(base_url: str, account: str, expected: tuple[int, int]) -> None:
    wait_until(
        lambda: cash(base_url, account) == expected,
        60,
        f"{account}'s (available, paid out) to be {expected}",
        observe=lambda: cash(base_url, account),
    )


def ledger_payouts(env: dict[str, str]) -> list[tuple[str, str, str, int]]:
    async def read() -> list[tuple[str, str, str, int]]:
        connection = await asyncpg.connect(env["DATABASE_URL"])
        try:
            rows = await connection.fetch(
                "SELECT account_id, entry_kind, transaction_ref, amount_minor FROM ledger_entries"
                " WHERE entry_kind IN ('PAID_OUT', 'PAYOUT_RETURNED') ORDER BY account_id, transaction_ref, entry_kind"
            )
            return [tuple(row) for row in rows]  # type: ignore[misc]
        finally:
            await connection.close()

    return asyncio.run(read())


def worker_count(processes: Processes, event_type: str, outcome: str) -> float:
    return processes.metric("worker", "cashback_events_consumed_total", {"event_type": event_type, "outcome": outcome}) or 0


def test_a_payout_run_rejected_and_confirmed_then_asked_again_across_a_restart(
    request: pytest.FixtureRequest, kafka_bootstrap: str, postgres_url: str, work_dir: Path
) -> None:
    with running_pipeline(
        request,
        kafka_bootstrap,
        postgres_url,
        work_dir,
        "payouts",
        REPO_ROOT / "tests" / "integration" / "offers.yaml",
        PAYOUT_MINIMUMS="EUR=1000",
    ) as (processes, base_url):
        env = processes.env
        rejected, confirmed, small = "pay-a", "pay-b", "pay-c"
        publish_records(env, dining(rejected, 50_000) + dining(confirmed, 40_000) + dining(small, 10_000))
        for account, available in ((rejected, 1_500), (confirmed, 1_200), (small, 300)):
            wait_cash(base_url, account, (available, 0))

        out = processes.cli("payouts", "run", "--run-id", "r1")
        assert out.strip() == "payout run r1: asked of 3 account(s) with AVAILABLE cash in the ledger"
        asked = {p["account_id"]: p for p in instructions(env, 2)}
        assert set(asked) == {rejected, confirmed}  # 3.00 EUR is under the 10.00 EUR minimum
        assert {k: v for k, v in asked[rejected].items() if k != "requested_at"} == {
            "payout_id": f"p:r1:{rejected}:EUR",
            "account_id": rejected,
            "amount_minor": 1_500,
            "currency": "EUR",
            "run_id": "r1",
        }
        assert asked[confirmed]["amount_minor"] == 1_200
        wait_cash(base_url, rejected, (0, 1_500))
        wait_cash(base_url, confirmed, (0, 1_200))

        answer(env, asked[rejected], "REJECTED", "account_closed")
        answer(env, asked[confirmed], "CONFIRMED")
        wait_cash(base_url, rejected, (1_500, 0))
        wait_cash(base_url, confirmed, (0, 1_200))
        wait_until(lambda: worker_count(processes, "PAYOUT_RESULT", "payout_confirmed") == 1, 30, "the confirmation decided")
        assert processes.metric("worker", "cashback_payouts_total", {"event": "requested", "currency": "EUR"}) == 2
        assert processes.metric("worker", "cashback_payouts_total", {"event": "rejected", "currency": "EUR"}) == 1
        assert processes.metric("worker", "cashback_payouts_total", {"event": "confirmed", "currency": "EUR"}) == 1
        assert processes.metric("worker", "cashback_payout_skips_total", {"reason": "nothing_to_pay"}) == 1
        # The confirmed account's customer is told; the rejected one's is not.
        paid = [(n["kind"], n["amount_minor"], n["line"]) for n in notifications_of(env, confirmed) if n["kind"] == "PAID"]
        assert paid == [("PAID", 1_200, "EUR 12.00 cashback paid to your account.")]
        assert not [n for n in notifications_of(env, rejected) if n["kind"] == "PAID"]
        # A confirmation after the rejection moves nothing: the first answer stands.
        answer(env, asked[rejected], "CONFIRMED")
        wait_until(lambda: worker_count(processes, "PAYOUT_RESULT", "no_change") == 1, 30, "the late answer decided")

        # The operators' view follows (the payouts table: requests from the ledger, answers read by the sink), with
        # the first answers.
        def listed() -> list[tuple[Any, ...]]:
            page = httpx.get(f"{base_url}/v1/operations/payouts?beneficiary=CUSTOMER", headers=api_headers(), timeout=5)
            return sorted((p["payout_id"], p["amount_minor"], p["status"], p["reason_code"]) for p in page.json()["payouts"])

        expected = [
            (f"p:r1:{rejected}:EUR", 1_500, "REJECTED", "account_closed"),
            (f"p:r1:{confirmed}:EUR", 1_200, "CONFIRMED", None),
        ]
        wait_until(lambda: listed() == sorted(expected), 30, "the payouts table to follow", observe=listed)

        # The history explains each line.
        history = httpx.get(
            f"{base_url}/v1/accounts/{rejected}/history", headers=api_headers([ACCOUNTS_READ], [rejected]), timeout=5
        ).json()["entries"]
        lines = {line["entry_kind"]: line["explanation"]["detail"] for line in history}
        assert lines["PAID_OUT"] == (
            f"paid out 15.00 EUR to the customer's bank account (payout p:r1:{rejected}:EUR, run r1; minimum 10.00 EUR)"
        )
        assert lines["PAYOUT_RETURNED"] == (
            f"payout p:r1:{rejected}:EUR of run r1 rejected by the bank (account_closed): 15.00 EUR back to AVAILABLE"
        )

        # The same run asked again (the ledger shows cash for the rejected and the small account), at another
        # time: the same event ids with other content, refused and dead-lettered; nothing moves.
        processes.cli("payouts", "run", "--run-id", "r1")
        wait_until(lambda: worker_count(processes, "PAYOUT_RUN", "duplicate_conflict") == 2, 30, "the repeated run refused")
        before_restart = ledger_payouts(env)
        assert before_restart == [
            (rejected, "PAID_OUT", f"p:r1:{rejected}:EUR", 1_500),
            (rejected, "PAYOUT_RETURNED", f"p:r1:{rejected}:EUR", 1_500),
            (confirmed, "PAID_OUT", f"p:r1:{confirmed}:EUR", 1_200),
        ]

        # The worker restarts: its wallets come back with its states; the next run pays the returned money.
        processes.stop("worker")
        processes.start("worker", "worker", env={"METRICS_PORT": str(processes.metrics_ports["worker"])})
        timed = "2026-12-03T0300Z"  # a run id that names its time, as a scheduled run's does
        processes.cli("payouts", "run", "--run-id", timed)
        wait_cash(base_url, rejected, (0, 1_500))
        # r1's two and this run's one, then the topic to its end: one asked of the small account would show.
        again = [p for p in instructions(env, 3) if p["run_id"] == timed]
        assert [(p["payout_id"], p["amount_minor"], p["requested_at"]) for p in again] == [
            (f"p:{timed}:{rejected}:EUR", 1_500, datetime(2026, 12, 3, 3, 0, tzinfo=UTC))
        ]
        # Asked again: the same events (the small account's; the rejected one's too if the ledger lagged), recognised.
        processes.cli("payouts", "run", "--run-id", timed)
        wait_until(lambda: worker_count(processes, "PAYOUT_RUN", "duplicate") >= 1, 30, "the repeated timed run recognised")
        answer(env, again[0], "CONFIRMED")
        wait_until(lambda: worker_count(processes, "PAYOUT_RESULT", "payout_confirmed") == 1, 30, "the timed run confirmed")
        assert cash(base_url, confirmed) == (0, 1_200) and cash(base_url, small) == (300, 0)
        assert cash(base_url, rejected) == (0, 1_500)
        # The customer's data export gives the paid out book as the balances route does.
        export = httpx.get(f"{base_url}/v1/operations/accounts/{confirmed}/export", headers=api_headers(), timeout=10)
        assert export.status_code == 200, export.text
        ((exported,),) = [export.json()["balances"]]
        assert (exported["available_minor"], exported["paid_out_minor"]) == (0, 1_200)
        assert {k: v for k, v in exported.items() if k.endswith("_minor")} == balance(base_url, confirmed)

        # Opening wallets from the ledger: a wallet the worker knows stays its own (no_change); an account the
        # worker never saw is dead-lettered, no state made for it.
        out = processes.cli("payouts", "open-wallets", "--account", small, "--account", "pay-never")
        assert "sent for 2 account(s) (applied by the workers to wallets not known only;" in out
        wait_until(lambda: worker_count(processes, "OPEN_WALLET", "no_change") == 1, 30, "the known wallet left as is")
        unknown = {"stage": "matcher", "reason": "unknown_account"}
        wait_until(lambda: processes.metric("worker", "cashback_dead_letters_total", unknown) == 1, 30, "the unknown account")
        assert ledger_payouts(env) == [(rejected, "PAID_OUT", f"p:{timed}:{rejected}:EUR", 1_500), *before_restart]


def test_the_local_stacks_core_banking_stand_in_answers_every_payout_once_per_group(kafka_bootstrap: str) -> None:
    import uuid

    from schemas.codec import Codec
    from stream.composition import System
    from stream.localstack.core_banking import answer_for, serve

    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_PREFIX": f"standin-{uuid.uuid4().hex[:8]}."}
    system = System.from_env(env)
    asyncio.run(system.create_topics())
    topics, codec = system.catalogue, Codec()
    payouts = [
        {
            "payout_id": f"p:r1:acct-{n}:EUR",
            "account_id": f"acct-{n}",
            "amount_minor": 100 + n,
            "currency": "EUR",
            "run_id": "r1",
            "requested_at": datetime(2026, 12, 3, 2, 0, tzinfo=UTC),
        }
        for n in range(30)
    ]
    messages = [(topics.payouts.name, p["account_id"].encode(), codec.encode("payout_instruction", p)) for p in payouts]
    asyncio.run(publish(kafka_bootstrap, messages))

    async def serve_until(count: int, quiet_s: float) -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(system.settings, codec, topics, stop, group_id="standin-test"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while loop.time() < deadline:
            await asyncio.sleep(quiet_s)
            if count == 0 or len(await _results(kafka_bootstrap, topics.payout_results.name)) >= count:
                break
        await asyncio.sleep(quiet_s)
        stop.set()
        return await task

    assert asyncio.run(serve_until(30, 1.0)) == 30
    answers = asyncio.run(_results(kafka_bootstrap, topics.payout_results.name))
    assert sorted((a["payout_id"], a["status"], a["reason_code"]) for a in answers) == sorted(
        (p["payout_id"], *answer_for(p["payout_id"])) for p in payouts
    )
    assert {a["status"] for a in answers} == {"CONFIRMED", "REJECTED"}  # most confirmed, a few rejected
    assert asyncio.run(serve_until(0, 3.0)) == 0  # restarted: its group committed, nothing answered twice


async def _results(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        for _ in range(4):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [fastavro.schemaless_reader(io.BytesIO(r.value[5:]), RESULT) for r in records]
    finally:
        await consumer.stop()
    return found


@pytest.mark.parametrize("asked_by", ["command", "schedule"])
def test_a_worker_killed_in_the_middle_of_a_payout_run_pays_each_account_once(
    request: pytest.FixtureRequest, kafka_bootstrap: str, postgres_url: str, work_dir: Path, asked_by: str
) -> None:
    """Money out under kill -9. A run is asked of 5,000 accounts with 15.00 EUR AVAILABLE each while the
    worker is stopped (``cashback payouts run``), or falls due as it starts (``PAYOUT_SCHEDULE``: the latest
    run is asked again of the accounts with cash at a start, its payout runs published by the worker's own
    clock); the worker is killed once some of them are paid (their PAID_OUT entries and payout instructions
    made) and others not yet, and started again. Every account is paid once: one PAID_OUT line, its whole
    cash moved, and the bank asked under one payout id (an instruction sent again after the crash carries the
    same id and amount, for the bank to take once)."""
    accounts = 5_000
    schedule = {"PAYOUT_SCHEDULE": "00:00"} if asked_by == "schedule" else {}
    with running_pipeline(
        request,
        kafka_bootstrap,
        postgres_url,
        work_dir,
        f"payout-kill-{asked_by}",
        REPO_ROOT / "tests" / "integration" / "offers.yaml",
        PAYOUT_MINIMUMS="EUR=1000",
        WORKER_INSTANCE_ID="worker-p",
        **schedule,
    ) as (processes, _):
        env, database_url = processes.env, processes.env["DATABASE_URL"]
        prefix = f"payk-{uuid.uuid4().hex[:6]}-"
        names = [f"{prefix}{n}" for n in range(accounts)]

        def cash() -> list[tuple[Any, ...]]:
            query = "SELECT available_minor, paid_out_minor FROM balances WHERE account_id LIKE $1"
            return rows_of(database_url, query, f"{prefix}%")

        publish_records(env, [record for name in names for record in dining(name, 50_000)])  # after the start's run
        wait_for_each(cash, (1_500, 0), accounts, "every account's cash AVAILABLE in the ledger")
        processes.stop("worker")  # the run all to do: the started worker is killed in its middle
        if asked_by == "command":
            processes.cli("payouts", "run", "--run-id", "r-kill")
        processes.start("worker", "worker", env={"METRICS_PORT": str(processes.metrics_ports["worker"])})
        processes.kill_in_the_middle({"event_type": "PAYOUT_RUN", "outcome": "paid_out"}, accounts // 5, accounts)
        wait_for_each(cash, (0, 1_500), accounts, f"each of the {accounts} accounts paid out")
        query = "SELECT account_id FROM ledger_entries WHERE entry_kind = 'PAID_OUT' AND account_id LIKE $1"
        assert Counter(account for (account,) in rows_of(database_url, query, f"{prefix}%")) == Counter(names)
        paid = instructions(env, accounts)
        (run,) = {payout["run_id"] for payout in paid}  # the command's, or the schedule's latest (its time)
        asked: dict[str, set[tuple[str, int]]] = {}
        for payout in paid:
            asked.setdefault(payout["account_id"], set()).add((payout["payout_id"], payout["amount_minor"]))
        assert asked == {name: {(f"p:{run}:{name}:EUR", 1_500)} for name in names}
        assert run == "r-kill" if asked_by == "command" else run.endswith("T0000Z")
        assert "Traceback" not in processes.log("worker")
