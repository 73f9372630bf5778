"""A campaign budget shared by several workers over many partitions is never overspent: two worker
processes in one consumer group, 40 accounts spread over the partitions, each purchase wanting
5.00 of a 50.00 budget: exactly 50.00 is granted, the other purchases record budget_exhausted.
And a worker whose batch's grants are refused (another worker spent the budget since it read it)
keeps nothing of the batch and reads it again: the purchase earns what is left, once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from schemas.codec import Codec
from stream.localstack.process import free_port
from stream.offer_admin import publish_offers
from stream.settings import Settings
from tests.factories import card_record, offer
from tests.integration.conftest import Processes, isolated_env, wait_until
from tests.integration.test_end_to_end import publish_records
from topics.catalogue import account_partition

pytestmark = pytest.mark.integration

ACCOUNTS = 40


def _budget_stack(kafka_bootstrap: str, postgres_url: str, work_dir: Path, workers: dict[str, dict[str, str]]) -> Processes:
    """Topics, the 50.00 campaign, the ``workers`` (name: extra environment) and a sink."""
    log_dir = work_dir / f"budget-{uuid.uuid4().hex[:8]}"
    log_dir.mkdir()
    processes = Processes(isolated_env(kafka_bootstrap, postgres_url, log_dir, "budget"), log_dir)
    processes.cli("topics")
    settings = Settings.from_env(processes.env)
    campaign = offer(offer_id="campaign-5", currency="EUR", budget_minor=5_000)
    asyncio.run(publish_offers(settings, Codec(), settings.topic_prefix + "offers", [campaign]))
    for name, extra in workers.items():
        processes.metrics_ports[name] = free_port()
        env = {"METRICS_PORT": str(processes.metrics_ports[name]), "WORKER_DATA_DIR": str(log_dir / name), **extra}
        processes.start(name, "worker", env=env)
    processes.start("sink", "sink")
    return processes


@pytest.fixture()
def two_workers(kafka_bootstrap: str, postgres_url: str, work_dir: Path) -> Iterator[Processes]:
    processes = _budget_stack(kafka_bootstrap, postgres_url, work_dir, {"worker-a": {}, "worker-b": {}})
    try:
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture()
def one_worker(kafka_bootstrap: str, postgres_url: str, work_dir: Path) -> Iterator[Processes]:
    """One worker that reads the budgets only when it grants (BUDGET_READ_MAX_AGE_S: an hour)."""
    processes = _budget_stack(kafka_bootstrap, postgres_url, work_dir, {"worker": {"BUDGET_READ_MAX_AGE_S": "3600"}})
    try:
        yield processes
    finally:
        processes.stop_all()


def test_a_batch_whose_budget_grants_are_refused_is_read_again_and_earns_what_is_left(one_worker: Processes) -> None:
    processes = one_worker
    url = processes.env["DATABASE_URL"]
    wait_until(lambda: _assigned(processes, "worker"), 90, "the worker to own partitions")
    first = card_record("CLEARING", 10_000, account_id="refused-a", transaction_ref="refused-a-ref")
    publish_records(processes.env, [first])
    wait_until(lambda: asyncio.run(_totals(url))[2] == 500, 60, "the first grant")  # the worker read 5.00 used
    asyncio.run(_spend_elsewhere(url, 4_300))  # another worker's purchases: 2.00 left
    second = card_record("CLEARING", 10_000, account_id="refused-b", transaction_ref="refused-b-ref")
    publish_records(processes.env, [second])

    wait_until(
        lambda: asyncio.run(_totals(url))[0] == 700, 60, "the second purchase's entry", observe=lambda: asyncio.run(_totals(url))
    )
    assert asyncio.run(_earned(url, "refused-b")) == [200]  # what was left, once
    assert asyncio.run(_totals(url))[2] == 5_000
    assert processes.metric("worker", "cashback_budget_batches_refused_total") == 1
    # each purchase counted once, though the refused one was decided twice
    assert processes.metric("worker", "cashback_events_consumed_total", {"event_type": "CLEARING"}) == 2


async def _spend_elsewhere(database_url: str, amount: int) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("UPDATE offer_budgets SET used_minor = used_minor + $1 WHERE offer_id = 'campaign-5'", amount)
    finally:
        await connection.close()


async def _earned(database_url: str, account_id: str) -> list[int]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT amount_minor FROM ledger_entries WHERE account_id = $1 AND entry_kind = 'CONFIRMED' ORDER BY amount_minor",
            account_id,
        )
        return [row["amount_minor"] for row in rows]
    finally:
        await connection.close()


def _assigned(processes: Processes, name: str) -> bool:
    """The worker reports lag, so it owns partitions (and serves metrics)."""
    try:
        return processes.metric(name, "cashback_consumer_lag_messages") is not None
    except httpx.HTTPError:  # not serving yet
        return False


async def _totals(database_url: str) -> tuple[int, int, int]:
    connection = await asyncpg.connect(database_url)
    try:
        granted = await connection.fetchval(
            "SELECT coalesce(sum(amount_minor), 0) FROM ledger_entries WHERE offer_id = 'campaign-5' AND entry_kind = 'CONFIRMED'"
        )
        exhausted = await connection.fetchval("SELECT count(*) FROM purchases_not_earned WHERE reason = 'budget_exhausted'")
        used = await connection.fetchval("SELECT used_minor FROM offer_budgets WHERE offer_id = 'campaign-5'")
        return int(granted), int(exhausted), int(used or 0)
    finally:
        await connection.close()


def test_two_workers_never_overspend_a_shared_budget(two_workers: Processes) -> None:
    processes = two_workers
    # Both workers joined the group and own partitions before the purchases arrive.
    wait_until(
        lambda: _assigned(processes, "worker-a") and _assigned(processes, "worker-b"), 90, "both workers to own partitions"
    )
    accounts = [f"budget-acct-{n:02d}" for n in range(ACCOUNTS)]
    assert len({account_partition(a, 4) for a in accounts}) == 4  # every partition has buyers
    purchases = [card_record("CLEARING", 10_000, account_id=a, transaction_ref=f"{a}-ref") for a in accounts]
    publish_records(processes.env, purchases)

    totals = wait_until(
        lambda: (t := asyncio.run(_totals(processes.env["DATABASE_URL"])))[0] + 500 * t[1] == 500 * ACCOUNTS and t,
        90,
        "every purchase to be decided",
        observe=lambda: asyncio.run(_totals(processes.env["DATABASE_URL"])),
    )
    granted, exhausted, used = totals
    assert (granted, used, exhausted) == (5_000, 5_000, ACCOUNTS - 10)
    decided = [
        processes.metric(name, "cashback_events_consumed_total", {"event_type": "CLEARING"}) or 0
        for name in ("worker-a", "worker-b")
    ]
    assert sum(decided) == ACCOUNTS and all(count > 0 for count in decided), decided  # both workers took part
