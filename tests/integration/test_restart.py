"""What operators do to a worker, against the real broker and Postgres: stop it (SIGTERM) or kill
it (SIGKILL) between an authorisation and its clearing, start it again, and everything goes on; kill
it while its own clock makes purchases available, and each is made available once; and what they
let happen to it: its disk filling (it exits, and started again with room loses nothing),
an error its agent does not handle (it exits, and started again loses nothing).

Two things are checked each time:
- it processes again, within the restart target (15 s from the new process's start to its first
  decided event, with static group membership);
- its table came back (its local store, which holds nothing the changelog does not, and the
  changelog's tail: stream.changelog_table): the clearing after the restart confirms *from
  PENDING* (the state held the authorisation). A worker that lost its state would confirm from
  EXPENSE as a force post, and the balances would still look right, so the ledger's books are
  what is asserted.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from stream.changelog_table import EXIT_STORE_FAILED
from stream.localstack.process import free_port
from stream.settings import Settings
from stream.stopping import EXIT_AGENT_FAILED
from tests.factories import card_record
from tests.integration.conftest import REPO_ROOT, rows_of, running_pipeline, wait_for_each, wait_until
from tests.integration.test_end_to_end import (
    PENDING_500,
    balance,
    balance_line,
    publish,
    publish_records,
    topic_for,
    wait_for_balance,
    wire,
)
from topics.catalogue import account_partition

pytestmark = pytest.mark.integration

RESTART_TARGET_S = 15.0
# Past RocksDB's own files at a store's opening (its info log the largest, about 25 KB), and well short of
# what one partition's write-ahead log takes in the full-disk test however its batches fall (its doc).
STORE_FILE_BYTES = 128 * 1024
CONFIRMED_500 = balance_line(confirmed_minor=500, lifetime_earned_minor=500)


async def _confirmations(database_url: str, account: str) -> list[tuple[str, str]]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT debit_book, credit_book FROM ledger_entries WHERE account_id = $1 AND entry_kind = 'CONFIRMED'", account
        )
        return [(row["debit_book"], row["credit_book"]) for row in rows]
    finally:
        await connection.close()


def _pipeline(request, kafka_bootstrap, postgres_url, work_dir, name: str, instance: str):  # type: ignore[no-untyped-def]
    """The pipeline with the end-to-end offers, its worker a static member (its instance id kept across restarts)."""
    offers = REPO_ROOT / "tests" / "integration" / "offers.yaml"
    return running_pipeline(request, kafka_bootstrap, postgres_url, work_dir, name, offers, WORKER_INSTANCE_ID=instance)


def _purchases(processes, prefix: str, purchases: int) -> list[str]:  # type: ignore[no-untyped-def]
    """``purchases`` authorisations of 100.00 for each of two accounts on each partition, published; the accounts."""
    partitions = Settings.from_env(processes.env).topic_partitions
    taken: Counter[int] = Counter()
    accounts = []
    while len(accounts) < 2 * partitions:
        account = f"{prefix}-{uuid.uuid4().hex[:6]}"
        if taken[partition := account_partition(account, partitions)] < 2:
            taken[partition] += 1
            accounts.append(account)
    publish_records(
        processes.env,
        [
            card_record("AUTHORIZATION", 10_000, account_id=a, transaction_ref=f"{a}-ref{n}", event_id=f"{a}-auth{n}")
            for n in range(purchases)
            for a in accounts
        ],
    )
    return accounts


def _exits_then_loses_nothing(  # type: ignore[no-untyped-def]
    processes,
    base_url: str,
    accounts: list[str],
    purchases: int,
    code: int,
    said: str,
    env: dict[str, str] | None = None,
    **start: Any,
) -> None:
    """The worker started (``env`` added to its environment, ``start`` to ``Processes.start``) exits with
    ``code``, its log saying ``said``; started again as it is, it makes every purchase pending, once."""
    port = {"METRICS_PORT": str(processes.metrics_ports["worker"])}
    processes.start("worker", "worker", env={**port, **(env or {})}, **start)
    worker = processes.children["worker"]
    assert worker.wait(timeout=120) == code, processes.log("worker")
    del processes.children["worker"]
    assert said in processes.log("worker")

    processes.start("worker", "worker", env=port)
    pending = balance_line(pending_minor=500 * purchases)
    for account in accounts:
        wait_for_balance(base_url, account, pending, timeout_s=60)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_restarted_worker_processes_again_with_its_state(request, kafka_bootstrap, postgres_url, work_dir, how) -> None:  # type: ignore[no-untyped-def]
    with _pipeline(request, kafka_bootstrap, postgres_url, work_dir, f"restart-{how}", "worker-a") as (processes, base_url):
        accounts = [f"{how}-{uuid.uuid4().hex[:6]}-{n}" for n in range(8)]  # spread over the partitions
        publish_records(
            processes.env,
            [
                card_record("AUTHORIZATION", 10_000, account_id=a, transaction_ref=f"{a}-ref", event_id=f"{a}-auth")
                for a in accounts
            ],
        )
        for account in accounts:
            wait_for_balance(base_url, account, PENDING_500)

        worker = processes.children["worker"]
        worker.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)  # type: ignore[attr-defined]
        worker.wait(timeout=30)  # type: ignore[attr-defined]
        del processes.children["worker"]

        publish_records(
            processes.env,
            [card_record("CLEARING", 10_000, account_id=a, transaction_ref=f"{a}-ref", event_id=f"{a}-clear") for a in accounts],
        )
        started = time.monotonic()
        processes.start("worker", "worker", env={"METRICS_PORT": str(processes.metrics_ports["worker"])})
        wait_until(lambda: processes.consumed(event_type="CLEARING") > 0, 60, "the restarted worker to decide an event")
        restart_s = time.monotonic() - started
        for account in accounts:
            wait_for_balance(base_url, account, CONFIRMED_500)
            assert asyncio.run(_confirmations(processes.env["DATABASE_URL"], account)) == [("PENDING", "CONFIRMED")]
        assert restart_s <= RESTART_TARGET_S, f"restarted worker decided its first event after {restart_s:.1f}s"
        # Nothing was decided twice in effect: exactly the two lines per account.
        assert all(balance(base_url, a) == CONFIRMED_500 for a in accounts)


def test_a_card_processor_not_partitioning_by_murmur2_is_decided_on_each_account_s_partition_across_a_restart(
    request, kafka_bootstrap, postgres_url, work_dir
) -> None:  # type: ignore[no-untyped-def]
    """librdkafka's default partitioner (CRC32), or a client naming partitions itself, puts an account's
    card events off its partition. Decided there, the account's state was stored on the wrong partition
    and looked for on its own once read back: after a restart the worker failed on the clearing for
    good. Each is now forwarded to its account's partition (stream.misrouted) and decided there, once,
    a redelivery too."""
    with _pipeline(request, kafka_bootstrap, postgres_url, work_dir, "misrouted", "worker-m") as (processes, base_url):
        partitions = Settings.from_env(processes.env).topic_partitions
        accounts = [f"misrouted-{uuid.uuid4().hex[:6]}-{n}" for n in range(8)]

        def misrouted(records: list[dict[str, Any]]) -> None:  # each on the partition after its account's
            def elsewhere(record: dict[str, Any]) -> int:
                return (account_partition(record["account_id"], partitions) + 1) % partitions

            messages = [(topic_for(processes.env, r), r["account_id"].encode(), wire(r), elsewhere(r)) for r in records]
            asyncio.run(publish(processes.env["KAFKA_BOOTSTRAP_SERVERS"], messages))

        def authorisation(a: str, n: int) -> dict[str, Any]:
            return card_record("AUTHORIZATION", 10_000, account_id=a, transaction_ref=f"{a}-ref{n}", event_id=f"{a}-auth{n}")

        # two purchases a batch apart: the state's first transaction is then a row of its own in the local store
        misrouted([authorisation(a, 1) for a in accounts])
        for account in accounts:
            wait_for_balance(base_url, account, PENDING_500)
        misrouted([authorisation(a, 2) for a in accounts])
        for account in accounts:
            wait_for_balance(base_url, account, balance_line(pending_minor=1000))
        forwarded = {"topic": topic_for(processes.env, authorisation("x", 1))}
        assert processes.metric("worker", "cashback_misrouted_forwarded_total", forwarded) == 16

        worker = processes.children.pop("worker")
        worker.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        worker.wait(timeout=30)  # type: ignore[attr-defined]
        # the first purchases' clearings, and their authorisations sent again: the restarted worker reads each
        # state back from its store
        misrouted(
            [card_record("CLEARING", 10_000, account_id=a, transaction_ref=f"{a}-ref1", event_id=f"{a}-clear") for a in accounts]
            + [authorisation(a, 1) for a in accounts]
        )
        processes.start("worker", "worker", env={"METRICS_PORT": str(processes.metrics_ports["worker"])})
        first_confirmed = balance_line(pending_minor=500, confirmed_minor=500, lifetime_earned_minor=500)
        for account in accounts:
            wait_for_balance(base_url, account, first_confirmed)
            assert asyncio.run(_confirmations(processes.env["DATABASE_URL"], account)) == [("PENDING", "CONFIRMED")]
        duplicates = {"event_type": "AUTHORIZATION", "outcome": "duplicate"}
        wait_until(
            lambda: processes.metric("worker", "cashback_events_consumed_total", duplicates) == 8,
            30,
            "the authorisations sent again decided as redeliveries",
        )
        assert all(balance(base_url, a) == first_confirmed for a in accounts)
        assert "Traceback" not in processes.log("worker")


def test_a_worker_whose_local_store_refuses_a_write_exits_and_started_again_loses_nothing(
    request, kafka_bootstrap, postgres_url, work_dir
) -> None:  # type: ignore[no-untyped-def]
    """A full disk under WORKER_DATA_DIR. RocksDB keeps a failed write's error in the open database for
    good, and the table kept the batch's changes in memory: Faust restarted the agent, which built on
    them batch after batch, nothing delivered, more decisions per account than its recent events keep,
    every attempt sending them to the changelog again (a 3 MB data directory filling: 377 ledger
    entries never sent, found by the chaos oracle). The worker now exits (code 74) at the first refused
    write, and started again with room sends every entry (stream.changelog_table). The disk here is a
    file-size limit on the worker: RocksDB's write-ahead log grows past it and the write fails. It must,
    whatever the batches: two accounts on each partition, 120 decisions of each stored in 4 flushes
    at least, each state holding 32 recent events (about 800 bytes each on the log:
    some 200 KB for two accounts at the fewest). With 60 decisions and a 256 KB limit, a partition's log
    took 258,423 bytes for two accounts, under the limit: when the accounts fell two on each partition
    the worker never exited (about 1 run in 25)."""
    with _pipeline(request, kafka_bootstrap, postgres_url, work_dir, "store-full", "worker-f") as (processes, base_url):
        processes.stop("worker")  # started again on a disk that fills
        purchases = 120  # each account's: more than the recent events it keeps with their entries (32)
        accounts = _purchases(processes, "full", purchases)
        _exits_then_loses_nothing(
            processes,
            base_url,
            accounts,
            purchases,
            EXIT_STORE_FAILED,
            "the local store refused a write",
            file_bytes=STORE_FILE_BYTES,
        )


@pytest.mark.parametrize("fault", ["error", "cancel"])
def test_a_worker_whose_agent_fails_exits_and_started_again_loses_nothing(
    request, kafka_bootstrap, postgres_url, work_dir, fault
) -> None:  # type: ignore[no-untyped-def]
    """An error no code path of the agent handles, raised after a batch's states reached the changelog
    and before its entries were sent. Faust started the agent again in the same process, and the
    worker never exited (a probe with faults at random: it stopped deciding within seconds of the
    first, and stayed up reading every partition again every 10 s). The worker now exits (code 70) and,
    started again, reads from its committed offsets: every purchase is pending once
    (stream.stopping.agent_failed). A ``CancelledError`` the agent's task was not asked for (a future it
    awaited cancelled under it) Faust took for a rebalance, restarting the agent in place without its
    error handler: it now fails the same way (stream.stopping.cancel_is_failure)."""
    with _pipeline(request, kafka_bootstrap, postgres_url, work_dir, f"agent-{fault}", f"worker-{fault}") as (
        processes,
        base_url,
    ):
        processes.stop("worker")  # started again with a fault in it
        purchases = 10
        accounts = _purchases(processes, "fails", purchases)
        said = "the matcher agent failed (RuntimeError)" if fault == "error" else "the matcher agent failed (StrayCancel)"
        _exits_then_loses_nothing(
            processes,
            base_url,
            accounts,
            purchases,
            EXIT_AGENT_FAILED,
            said,
            env={"FAIL_AT_ENTRIES": "5", "FAIL_WITH": fault},
            module="tests.integration.failing_worker",
        )


@pytest.mark.parametrize("how", ["kill", "join"])
def test_a_worker_killed_or_joined_while_its_clock_makes_purchases_available_makes_each_available_once(
    request, kafka_bootstrap, postgres_url, work_dir, how
) -> None:  # type: ignore[no-untyped-def]
    """Time passing under kill -9, and under a rebalance. Purchases settled 40 days ago (force posts at
    the 5% grocery offer, its return window 30 days) are confirmed as they are decided, and the workers'
    own clock ticks then end their return windows: CONFIRMED to AVAILABLE, decided on the ticks, not on
    any card event. While the ticks are doing so (some windows ended, others not yet), the worker is
    killed and started again; or, the purchases published a wave a second, a second worker joins the
    group and takes partitions with their states, and decides windows ending there. Every purchase is
    made available exactly once, none left confirmed, none twice, and each account's balance is what
    its ledger says."""
    accounts, purchases = 2_000, 3
    total = accounts * purchases
    with _pipeline(request, kafka_bootstrap, postgres_url, work_dir, f"time-{how}", "worker-t") as (processes, _):
        prefix = f"due-{uuid.uuid4().hex[:6]}-"
        settled = datetime.now(UTC) - timedelta(days=40)
        clearings = [
            card_record(
                "CLEARING",
                10_000,
                account_id=f"{prefix}{a}",
                transaction_ref=f"{prefix}{a}-ref{n}",
                event_id=f"{prefix}{a}-clear{n}",
                occurred_at=settled + timedelta(minutes=n),
            )
            for n in range(purchases)
            for a in range(accounts)
        ]
        windows_ended = {"event_type": "RETURN_WINDOW_ENDED"}
        if how == "kill":
            processes.stop("worker")  # the clearings all published first: the restarted worker's ticks have much to do
            publish_records(processes.env, clearings)
            processes.start("worker", "worker", env={"METRICS_PORT": str(processes.metrics_ports["worker"])})
            processes.kill_in_the_middle(windows_ended, total // 5, total)
        else:
            waves = 20
            for wave in range(waves):
                publish_records(processes.env, clearings[wave::waves])
                if wave == 1:  # a second worker of the group, with its own store and instance id
                    processes.metrics_ports["worker-2"] = free_port()
                    joining = {"METRICS_PORT": str(processes.metrics_ports["worker-2"]), "WORKER_INSTANCE_ID": "worker-t2"}
                    processes.start(
                        "worker-2", "worker", env={**joining, "WORKER_DATA_DIR": processes.env["WORKER_DATA_DIR"] + "-2"}
                    )
                time.sleep(1.0)

        database_url = processes.env["DATABASE_URL"]
        pattern = f"{prefix}%"

        def balances() -> list[tuple[Any, ...]]:
            query = "SELECT pending_minor, confirmed_minor, available_minor FROM balances WHERE account_id LIKE $1"
            return rows_of(database_url, query, pattern)

        made_available = (0, 0, 500 * purchases)
        wait_for_each(
            balances, made_available, accounts, f"each of the {accounts} accounts' {purchases} purchases made available"
        )
        query = "SELECT transaction_ref, entry_kind, count(*) FROM ledger_entries WHERE account_id LIKE $1 GROUP BY 1, 2"
        lines = {(ref, kind): n for ref, kind, n in rows_of(database_url, query, pattern)}
        refs = {f"{prefix}{a}-ref{n}" for a in range(accounts) for n in range(purchases)}
        assert {ref for ref, _ in lines} == refs
        assert {kind for _, kind in lines} == {"CONFIRMED", "MADE_AVAILABLE"}
        assert set(lines.values()) == {1}, [key for key, n in lines.items() if n != 1][:5]
        if how == "join":  # the rebalance came while time passed: each worker ended windows
            assert processes.consumed("worker-2", **windows_ended) > 0
            assert processes.consumed("worker", **windows_ended) > 0
        assert "Traceback" not in processes.log("worker") + processes.log("worker-2")
