"""Outages, as operators and bank apps meet them.

An operator stops a process (SIGTERM) while Postgres or the broker is away, as a redeploy during an
outage does: it must stop at once (or within its bounds), cleanly, and lose nothing.

- The sink, waiting to write a batch: the next sink writes it once Postgres is back, only once.
- A worker whose campaign budget's grant waits for Postgres: the next worker decides the purchase
  once Postgres is back, and grants it once.
- A worker while the broker is away (its producer holding what it cannot deliver, its fetches
  backing off): it stops within its bounds (``stream.worker_stop``), and once the broker is back
  the next worker goes on, nothing lost or counted twice.

A bank app reading balances while Postgres is away gets a 503 to retry (with Retry-After), not a
500, and the API answers again once Postgres is back; one activating an offer while the broker is
away gets a 503 after a bounded wait, not a request hanging for ever, and the API still stops.

Against the real broker and Postgres, the one stopped and started again the test's own, with the
worker, the sink and the API as real processes.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from schemas.codec import Codec
from stream.auth import ACCOUNTS_READ, OFFERS_ACTIVATE, OPERATIONS
from stream.localstack.kafka import DEFAULT_CACHE_DIR, KafkaBroker
from stream.localstack.postgres import EmbeddedPostgres
from stream.localstack.process import free_port
from stream.offer_admin import publish_offers
from stream.settings import Settings
from tests.factories import card_record, offer
from tests.integration.conftest import REPO_ROOT, Processes, api_headers, api_ready, isolated_env, wait_until
from tests.integration.test_end_to_end import publish_records

pytestmark = pytest.mark.integration

STOP_WITHIN_S = 10.0  # a stop during a Postgres outage, SIGTERM to exit
# a worker's stop while the broker is away: its flush, its last commit and its producer's stop (5 s
# each, then 1 s after the cancel: stream.worker_stop), mode's own second; a cluster gives it 60 s
# (README, Stopping)
STOP_BROKER_AWAY_S = 30.0


async def _pending(database_url: str, account: str) -> tuple[int, int] | None:
    """The account's pending balance and its ledger entries (None: Postgres does not answer)."""
    try:
        connection = await asyncpg.connect(database_url, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return None
    try:
        pending = await connection.fetchval("SELECT coalesce(sum(pending_minor), 0) FROM balances WHERE account_id = $1", account)
        entries = await connection.fetchval("SELECT count(*) FROM ledger_entries WHERE account_id = $1", account)
        return int(pending), int(entries)
    finally:
        await connection.close()


def pending(database_url: str, account: str) -> tuple[int, int] | None:
    return asyncio.run(_pending(database_url, account))


def authorisation(account: str, number: int) -> dict[str, object]:
    # 2,000 at the 5% grocery offer: 100 pending
    return card_record(
        "AUTHORIZATION", 2_000, account_id=account, transaction_ref=f"{account}-{number}", event_id=f"{account}-e{number}"
    )


@contextmanager
def own_postgres(kafka_bootstrap: str, work_dir: Path, **extra: str) -> Iterator[tuple[EmbeddedPostgres, Processes]]:
    """A Postgres of the test's own, migrated, and processes (none started) on fresh topics."""
    data_dir = Path(tempfile.mkdtemp(prefix="cashback-stop-outage-"))
    data_dir.chmod(0o755)
    server = EmbeddedPostgres(data_dir / "pg", port=free_port(), fast=True)
    log_dir = work_dir / f"stop-outage-{uuid.uuid4().hex[:8]}"
    log_dir.mkdir()
    processes: Processes | None = None
    try:
        processes = Processes(isolated_env(kafka_bootstrap, server.start(), log_dir, "stopoutage", **extra), log_dir)
        processes.cli("topics")
        processes.cli("migrate")
        processes.metrics_ports = {"worker": free_port(), "sink": free_port()}
        yield server, processes
    finally:
        if processes is not None:
            processes.stop_all()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def start(processes: Processes, name: str) -> None:
    processes.start(name, name, env={"METRICS_PORT": str(processes.metrics_ports[name])})


def stopped_within(
    processes: Processes, name: str, seconds: float, bounded: bool = False, codes: tuple[int, ...] = (0,)
) -> float:
    """SIGTERM the process; the seconds it took to exit, cleanly (a failed assertion otherwise)."""
    process: Any = processes.children.pop(name)
    process.send_signal(signal.SIGTERM)
    return exited_within(processes, name, process, time.monotonic(), seconds, bounded, codes)


def exited_within(
    processes: Processes,
    name: str,
    process: Any,
    asked: float,
    seconds: float,
    bounded: bool = False,
    codes: tuple[int, ...] = (0,),
) -> float:
    """The seconds from ``asked`` (its SIGTERM) to the process's exit, cleanly: with one of ``codes``
    and (unless ``bounded``) no step of its stop cut short."""
    try:
        code = process.wait(timeout=max(0.0, asked + seconds - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
        noise = ("Unable connect", "Unable to update", "NodeNotReady", "Failed fetch", "Got error produce")
        text = (processes.log_dir / f"{name}.log").read_text(errors="replace")
        stop = "\n".join(line for line in text.splitlines() if not any(n in line for n in noise))[-6000:]
        raise AssertionError(f"the {name} did not stop within {seconds:.0f}s of SIGTERM during the outage:\n{stop}") from None
    assert code in codes, f"the {name}'s stop during the outage ended with {code}:\n{processes.log(name)}"
    if not bounded:
        assert "did not finish" not in processes.log(name), f"a step of the {name}'s stop ran into its bound"
    return time.monotonic() - asked


def stopped_in_an_outage(
    server: EmbeddedPostgres, processes: Processes, account: str, name: str, waiting: Callable[[], bool]
) -> None:
    """The account's first purchase in the ledger; Postgres stopped; a second purchase published, and
    ``name`` seen waiting for Postgres with it (``waiting``); ``name`` stopped (SIGTERM) within
    ``STOP_WITHIN_S``; Postgres back and ``name`` started again: the second purchase in the ledger,
    once."""
    env, database_url = processes.env, processes.env["DATABASE_URL"]
    publish_records(env, [authorisation(account, 1)])
    wait_until(lambda: pending(database_url, account) == (100, 1), 90, "the first purchase in the ledger")

    server.stop()  # the outage begins
    publish_records(env, [authorisation(account, 2)])
    wait_until(waiting, 60, f"the {name} to wait for Postgres with the second purchase")
    stopped_within(processes, name, STOP_WITHIN_S)

    server.start()  # the outage ends: the next one does what the stopped one gave up, once
    start(processes, name)
    wait_until(
        lambda: pending(database_url, account) == (200, 2),
        90,
        "the second purchase in the ledger, once",
        observe=lambda: pending(database_url, account),
    )


def test_a_sink_stopped_during_a_postgres_outage_stops_at_once_and_loses_nothing(kafka_bootstrap: str, work_dir: Path) -> None:
    with own_postgres(kafka_bootstrap, work_dir) as (server, processes):
        env, database_url = processes.env, processes.env["DATABASE_URL"]
        processes.cli("offers", "load", str(REPO_ROOT / "tests" / "integration" / "offers.yaml"))
        start(processes, "worker")
        start(processes, "sink")
        account = f"outage-{uuid.uuid4().hex[:6]}"
        stopped_in_an_outage(
            server,
            processes,
            account,
            "sink",
            lambda: (processes.metric("sink", "cashback_sink_retries_total") or 0) > 0,
        )
        publish_records(env, [authorisation(account, 3)])  # and the sink goes on from there
        wait_until(lambda: pending(database_url, account) == (300, 3), 60, "the third purchase in the ledger")


def test_a_worker_stopped_while_its_budget_grant_waits_for_postgres_stops_and_grants_once(
    kafka_bootstrap: str, work_dir: Path
) -> None:
    with own_postgres(kafka_bootstrap, work_dir) as (server, processes):
        env, database_url = processes.env, processes.env["DATABASE_URL"]
        settings = Settings.from_env(env)
        campaign = offer(currency="EUR", budget_minor=5_000)  # 5% at supermarkets, 50.00 to give
        asyncio.run(publish_offers(settings, Codec(), settings.topic_prefix + "offers", [campaign]))
        start(processes, "worker")
        start(processes, "sink")
        account = f"outage-{uuid.uuid4().hex[:6]}"
        stopped_in_an_outage(
            server, processes, account, "worker", lambda: "Postgres unavailable for budgets" in processes.log("worker")
        )
        assert asyncio.run(budget_used(database_url)) == 200, "each purchase granted once"


async def budget_used(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(await connection.fetchval("SELECT used_minor FROM offer_budgets WHERE offer_id = 'grocery-5'"))
    finally:
        await connection.close()


def test_a_bank_app_reading_during_a_postgres_outage_gets_a_503_to_retry(kafka_bootstrap: str, work_dir: Path) -> None:
    api_port = free_port()
    with own_postgres(kafka_bootstrap, work_dir, API_PORT=str(api_port)) as (server, processes):
        base_url = f"http://127.0.0.1:{api_port}"
        processes.start("api", "api")
        wait_until(lambda: api_ready(base_url), 60, "the API to be ready")
        headers = api_headers([ACCOUNTS_READ], ["acct-outage"])
        url = f"{base_url}/v1/accounts/acct-outage/balances"
        assert httpx.get(url, headers=headers, timeout=10).status_code == 404  # never seen

        server.stop()  # the outage begins
        for _ in range(2):  # each request while it lasts
            answer = httpx.get(url, headers=headers, timeout=10)
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "5"
            assert "database is unavailable" in answer.json()["detail"]
        assert httpx.get(f"{base_url}/readyz", timeout=10).status_code == 503

        server.start()  # the outage ends: the API answers again, with no restart
        wait_until(lambda: httpx.get(url, headers=headers, timeout=10).status_code == 404, 30, "the API to answer again")
        # uvicorn's traceback of a request that raised (the 500 answered before); asyncpg's own warning of its
        # pool's floor, with its traceback, is the library's
        assert "Exception in ASGI application" not in processes.log("api")
        # one line per request, naming its route as declared: the path would name the account (personal data)
        assert "GET /v1/accounts/{account_id}/balances: the database is unavailable" in processes.log("api")
        assert "acct-outage" not in processes.log("api")


def test_while_the_broker_is_away_a_worker_stops_and_a_bank_app_gets_a_503(postgres_url: str, work_dir: Path) -> None:
    """The worker stops within its bounds and the next one goes on, nothing lost or counted twice; an
    activation is answered 503 after a bounded wait, an export and an erasure at once; the API and the sink still stop."""
    data_dir = Path(tempfile.mkdtemp(prefix="cashback-broker-away-"))
    broker = KafkaBroker(DEFAULT_CACHE_DIR, data_dir / "kafka", port=free_port(), partitions_default=4)
    log_dir = work_dir / f"broker-away-{uuid.uuid4().hex[:8]}"
    log_dir.mkdir()
    api_port = free_port()
    processes: Processes | None = None
    try:
        extra = {"CLOCK_INTERVAL_S": "0.5", "API_PORT": str(api_port)}
        processes = Processes(isolated_env(broker.start(), postgres_url, log_dir, "brokeraway", **extra), log_dir)
        env, database_url = processes.env, processes.env["DATABASE_URL"]
        processes.cli("topics")
        processes.cli("migrate")
        processes.cli("offers", "load", str(REPO_ROOT / "tests" / "integration" / "offers.yaml"))
        processes.metrics_ports = {"worker": free_port(), "sink": free_port()}
        start(processes, "worker")
        start(processes, "sink")
        processes.start("api", "api")
        base_url = f"http://127.0.0.1:{api_port}"
        account = f"away-{uuid.uuid4().hex[:6]}"
        activation = f"{base_url}/v1/accounts/{account}/offers/grocery-5/activation"
        headers = api_headers([OFFERS_ACTIVATE], [account])
        publish_records(env, [authorisation(account, 1)])
        wait_until(lambda: pending(database_url, account) == (100, 1), 90, "the first purchase in the ledger")
        wait_until(lambda: api_ready(base_url), 60, "the API to be ready")
        assert httpx.put(activation, headers=headers, timeout=10).status_code == 200

        broker.stop()  # the broker is away: the worker's clock ticks cannot be delivered, its fetches fail
        time.sleep(3)
        worker: Any = processes.children.pop("worker")
        asked = time.monotonic()
        worker.send_signal(signal.SIGTERM)  # its stop runs while the bank app waits for its answer
        answer = httpx.put(activation, headers=headers, timeout=60)
        assert answer.status_code == 503, answer.text
        assert time.monotonic() - asked < 15, "a bounded wait for the broker"
        assert answer.headers["Retry-After"] == "5"
        assert "send it again" in answer.json()["detail"]
        operations = api_headers([OPERATIONS])  # an export and an erasure reach the broker with clients of their own
        for method, path, body in (("GET", "export", None), ("POST", "erasure", {"reason": "DSR-2026-0042"})):
            answer = httpx.request(
                method, f"{base_url}/v1/operations/accounts/{account}/{path}", headers=operations, json=body, timeout=60
            )
            assert (answer.status_code, answer.headers.get("Retry-After")) == (503, "5"), answer.text
            assert "event stream" in answer.json()["detail"]
        assert "Exception in ASGI application" not in processes.log("api") and account not in processes.log("api")
        exited_within(processes, "worker", worker, asked, STOP_BROKER_AWAY_S, bounded=True)
        assert "Traceback" not in processes.log("worker").split("Signal received")[-1], "the stop raised"
        # the API too, its producer's stop bounded (stream.api_common.shut_down); uvicorn exits by the signal it got
        stopped_within(processes, "api", 15, bounded=True, codes=(0, -signal.SIGTERM))
        # the sink and its payout answers' reader: aiokafka's consumer stop cut short (aiokafka #647) used to skip the
        # rest of their cleanup, their producers left unclosed (stream.kafka_clients.stop_consumer)
        stopped_within(processes, "sink", STOP_WITHIN_S)
        assert not [line for line in processes.log("sink").splitlines() if "Unclosed" in line]

        broker.start()  # the broker is back: a new worker goes on from the committed offsets
        start(processes, "worker")
        start(processes, "sink")
        publish_records(env, [authorisation(account, 2)])
        wait_until(
            lambda: pending(database_url, account) == (200, 2),
            120,
            "the second purchase in the ledger, once (and the first not again)",
            observe=lambda: pending(database_url, account),
        )
    finally:
        if processes is not None:
            processes.stop_all()
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
