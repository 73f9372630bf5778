"""What operators do to a worker, against the real broker and Postgres: stop it (SIGTERM) or kill
it (SIGKILL) between an authorisation and its clearing, start it again, and everything goes on.

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

import asyncpg
import pytest

from tests.factories import card_record
from tests.integration.conftest import REPO_ROOT, running_pipeline, wait_until
from tests.integration.test_end_to_end import balance, publish_records, wait_for_balance

pytestmark = pytest.mark.integration

RESTART_TARGET_S = 15.0
PENDING_500 = {
    "pending_minor": 500,
    "confirmed_minor": 0,
    "available_minor": 0,
    "lifetime_earned_minor": 0,
    "clawed_back_minor": 0,
    "donated_minor": 0,
    "held_minor": 0,
    "paid_out_minor": 0,
    "redeemed_minor": 0,
}
CONFIRMED_500 = {
    "pending_minor": 0,
    "confirmed_minor": 500,
    "available_minor": 0,
    "lifetime_earned_minor": 500,
    "clawed_back_minor": 0,
    "donated_minor": 0,
    "held_minor": 0,
    "paid_out_minor": 0,
    "redeemed_minor": 0,
}


async def _confirmations(database_url: str, account: str) -> list[tuple[str, str]]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT debit_book, credit_book FROM ledger_entries WHERE account_id = $1 AND entry_kind = 'CONFIRMED'", account
        )
        return [(row["debit_book"], row["credit_book"]) for row in rows]
    finally:
        await connection.close()


def _decided(processes) -> float:  # type: ignore[no-untyped-def]
    """Card events the worker decided (clock ticks do not count)."""
    try:
        return processes.metric("worker", "cashback_events_consumed_total", {"event_type": "CLEARING"}) or 0.0
    except Exception:  # noqa: BLE001 - not serving yet
        return 0.0


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_restarted_worker_processes_again_with_its_state(request, kafka_bootstrap, postgres_url, work_dir, how) -> None:  # type: ignore[no-untyped-def]
    with running_pipeline(
        request,
        kafka_bootstrap,
        postgres_url,
        work_dir,
        f"restart-{how}",
        REPO_ROOT / "tests" / "integration" / "offers.yaml",
        WORKER_INSTANCE_ID="worker-a",
    ) as (processes, base_url):
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
        wait_until(lambda: _decided(processes) > 0, 60, "the restarted worker to decide an event")
        restart_s = time.monotonic() - started
        for account in accounts:
            wait_for_balance(base_url, account, CONFIRMED_500)
            assert asyncio.run(_confirmations(processes.env["DATABASE_URL"], account)) == [("PENDING", "CONFIRMED")]
        assert restart_s <= RESTART_TARGET_S, f"restarted worker decided its first event after {restart_s:.1f}s"
        # Nothing was decided twice in effect: exactly the two lines per account.
        assert all(balance(base_url, a) == CONFIRMED_500 for a in accounts)
