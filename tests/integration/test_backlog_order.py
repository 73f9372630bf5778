"""A worker catching up on a backlog decides each partition's messages in the order they were
published across its topics, against the real broker and Postgres.

The operator's case: the worker is down (a crash, a redeploy) while the card processor and the
bank's app go on publishing. An account activates an offer, buys, and the purchase clears; on
other topics of the same partitions, thousands of other messages wait too. When the worker comes
back every topic holds a backlog, and Faust's fetcher takes them round robin, a message from each
topic in turn: the clearing (near the head of a short backlog) was decided before its authorisation
and the activation (at the end of long ones), so the clearing was a force post with a
reconciliation item and the activated offer's purchase earned nothing. In the order they were
published, the authorisation makes a pending line that the clearing confirms, and the activation
comes first (``stream.input_order``).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from schemas.codec import Codec
from tests.factories import T0, card_record
from tests.integration.conftest import running_pipeline, wait_until
from tests.integration.test_end_to_end import balance, publish_records, topic_for, wait_for_balance, wire
from topics.catalogue import account_partition

pytestmark = pytest.mark.integration

OFFERS = """\
offers:
  - offer_id: grocery-5
    name: "5% back at supermarkets"
    rate_bps: 500
    mccs: ["5411"]
  - offer_id: flights-4
    name: "4% back on flights, once activated"
    rate_bps: 400
    mccs: ["4511"]
    requires_activation: true
"""
CODEC = Codec()  # one for the module: building one reads every schema (about 30 ms)
FILLER = 1_500  # messages on each of two other topics, spread over the partitions
# Grocery 100.00 cleared as 80.00 (4.00 confirmed, the rest released) and a flight of 100.00 at 4%
# once activated (4.00): 8.00 confirmed, nothing pending.
CONFIRMED = {
    "pending_minor": 0,
    "confirmed_minor": 800,
    "available_minor": 0,
    "lifetime_earned_minor": 800,
    "clawed_back_minor": 0,
    "donated_minor": 0,
    "held_minor": 0,
    "paid_out_minor": 0,
    "redeemed_minor": 0,
}


async def _publish_in_order(bootstrap: str, messages: list[tuple[str, bytes, bytes, int | None]]) -> None:
    """Each message after the one before it, its timestamp (CreateTime) a millisecond later at
    least, as the card processor and the bank's app publish them one after the other."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        stamp = int(time.time() * 1000)
        deliveries = []
        for topic, key, value, partition in messages:
            stamp += 1
            deliveries.append(await producer.send(topic, value, key=key, partition=partition, timestamp_ms=stamp))
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()


def _card(env: dict[str, str], record: dict[str, Any]) -> tuple[str, bytes, bytes, int | None]:
    return topic_for(env, record), record["account_id"].encode(), wire(record), None


def _purchases(
    env: dict[str, str], accounts: list[str], kind: str, food_minor: int, first_id: int
) -> list[tuple[str, bytes, bytes, int | None]]:
    """Each account's grocery purchase (5%) and flight of 100.00 (4% once activated), as ``kind``."""
    return [
        _card(env, card_record(kind, amount, account_id=a, transaction_ref=f"{a}-{ref}", event_id=f"{a}-{first_id + n}", mcc=mcc))
        for a in accounts
        for n, (ref, amount, mcc) in enumerate((("food", food_minor, "5411"), ("fly", 10_000, "4511")))
    ]


def _activation(env: dict[str, str], account: str, offer: str) -> tuple[str, bytes, bytes, int | None]:
    changed_at = T0 - timedelta(days=1)  # activated before the purchases (whose time is T0)
    value = CODEC.encode("offer_activation", {"account_id": account, "offer_id": offer, "active": True, "changed_at": changed_at})
    partition = account_partition(account, int(env.get("TOPIC_PARTITIONS", "4")))
    return env["TOPIC_PREFIX"] + "offer-activations", f"{account}:{offer}".encode(), value, partition


async def _ledger(database_url: str, account: str) -> tuple[list[tuple[str, str, str]], int]:
    connection = await asyncpg.connect(database_url)
    try:
        lines = await connection.fetch(
            "SELECT entry_kind, debit_book, credit_book FROM ledger_entries WHERE account_id = $1 ORDER BY entry_kind, debit_book",
            account,
        )
        items = await connection.fetchval("SELECT count(*) FROM reconciliation_items WHERE account_id = $1", account)
        return [(r["entry_kind"], r["debit_book"], r["credit_book"]) for r in lines], items
    finally:
        await connection.close()


def test_a_backlog_is_decided_in_the_order_it_was_published(
    request: pytest.FixtureRequest, kafka_bootstrap: str, postgres_url: str, work_dir: Path
) -> None:
    offers = work_dir / "order-offers.yaml"
    offers.write_text(OFFERS)
    with running_pipeline(request, kafka_bootstrap, postgres_url, work_dir, "backlog-order", offers) as (processes, base_url):
        env = processes.env
        tag = uuid.uuid4().hex[:6]
        warm = f"order-{tag}-warm"
        publish_records(env, [card_record("AUTHORIZATION", 10_000, account_id=warm, transaction_ref=f"{warm}-ref")])
        wait_until(lambda: balance(base_url, warm) is not None, 60, "the worker to decide a first event")

        worker = processes.children.pop("worker")
        worker.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        worker.wait(timeout=30)  # type: ignore[attr-defined]

        accounts = [f"order-{tag}-{n}" for n in range(8)]  # spread over the partitions
        fillers = [f"order-{tag}-filler-{n}" for n in range(FILLER)]
        messages = [_activation(env, a, "flights-4") for a in fillers]  # a long backlog of activations
        messages += [  # and of authorisations that earn nothing
            _card(env, card_record("AUTHORIZATION", 1_000, account_id=a, transaction_ref=f"{a}-ref", mcc="5999")) for a in fillers
        ]
        messages += [_activation(env, a, "flights-4") for a in accounts]
        messages += _purchases(env, accounts, "AUTHORIZATION", food_minor=10_000, first_id=1)
        messages += _purchases(env, accounts, "CLEARING", food_minor=8_000, first_id=3)  # the grocery's cleared for less
        asyncio.run(_publish_in_order(env["KAFKA_BOOTSTRAP_SERVERS"], messages))

        processes.start("worker", "worker", env={"METRICS_PORT": str(processes.metrics_ports["worker"])})
        for account in accounts:
            wait_for_balance(base_url, account, CONFIRMED, timeout_s=120)
        for account in accounts:
            lines, items = asyncio.run(_ledger(env["DATABASE_URL"], account))
            # Each purchase a pending line its clearing confirms (the grocery's rest released);
            # no force post, so no reconciliation item.
            assert sorted(lines) == [
                ("CONFIRMED", "PENDING", "CONFIRMED"),
                ("CONFIRMED", "PENDING", "CONFIRMED"),
                ("PENDING_CREATED", "EXPENSE", "PENDING"),
                ("PENDING_CREATED", "EXPENSE", "PENDING"),
                ("PENDING_RELEASED", "PENDING", "EXPENSE"),
            ], (account, lines)
            assert items == 0, (account, items)
