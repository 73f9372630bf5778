"""The conformance scenarios (tests/conformance/cases) end to end: through the real broker, the
worker, the sink, Postgres and the balance API, each gives the same ledger, reasons and balances
as its file (and as the pure engine).

Events are published one at a time (by one producer for the module) and each is waited for, so the
worker sees them in the file's order even across the two input topics. Each scenario runs with
exactly its own offers live."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from schemas.codec import Codec
from stream.account_messages import publish_activation, publish_segments
from stream.auth import ACCOUNTS_READ
from stream.core.balances import BALANCE_FIELDS
from stream.offer_admin import publish_offers, remove_offers
from stream.settings import Settings
from tests.conformance.scenario import (
    ExpectedEntry,
    ExpectedNotification,
    Scenario,
    all_scenarios,
    comparable,
    comparable_notifications,
    is_time,
    label_of,
    names_offer,
    notification_view,
)
from tests.integration.conftest import Processes, api_headers, running_pipeline, wait_until
from tests.integration.test_end_to_end import notifications_of, topic_for, wire
from topics.catalogue import account_partition, catalogue

pytestmark = pytest.mark.integration

SCENARIOS = all_scenarios()


class Conformance:
    def __init__(self, processes: Processes, base_url: str) -> None:
        self.processes = processes
        self.base_url = base_url
        self.settings = Settings.from_env(processes.env)
        self.offers_topic = processes.env["TOPIC_PREFIX"] + "offers"
        self.live_offers: list[str] = []
        self.details: list[tuple[str, str, str]] = []  # (event label, reason, detail) of the last ledger read
        self.codec = Codec()
        # One producer for every scenario, on a loop of its own: a new producer per message cost more
        # than the worker's decision (its connection, metadata and producer id).
        self._loop = asyncio.new_event_loop()
        self._producer: AIOKafkaProducer | None = None

    def publish(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        """One message, acknowledged by every replica, before the next is published."""

        async def send() -> None:
            if self._producer is None:
                bootstrap = self.processes.env["KAFKA_BOOTSTRAP_SERVERS"]
                self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
                await self._producer.start()
            await self._producer.send_and_wait(topic, value, key=key, partition=partition)

        self._loop.run_until_complete(send())

    def close(self) -> None:
        if self._producer is not None:
            self._loop.run_until_complete(self._producer.stop())
        self._loop.close()

    def wait_processed(self, before: float, what: str) -> None:
        """Until the worker has finished with more input messages than ``before``."""
        wait_until(lambda: self.processed() > before, 30, what, interval_s=0.02, observe=self.processed)

    def processed(self) -> float:
        """Input messages the worker has finished with: decided or dead-lettered."""
        decided = self.processes.metric("worker", "cashback_events_consumed_total") or 0
        dead = self.processes.metric("worker", "cashback_dead_letters_total", {"stage": "matcher"}) or 0
        return decided + dead

    def use_offers(self, scenario: Scenario) -> None:
        loaded = lambda: self.processes.metric("worker", "cashback_offers_loaded")  # noqa: E731
        if self.live_offers:
            asyncio.run(remove_offers(self.settings, self.offers_topic, self.live_offers))
            wait_until(lambda: loaded() == 0, 30, "the old offers to be removed", observe=loaded)
        asyncio.run(publish_offers(self.settings, self.codec, self.offers_topic, scenario.offers))
        self.live_offers = [o.offer_id for o in scenario.offers]
        wait_until(lambda: loaded() == len(scenario.offers), 30, f"the offers of {scenario.name}", observe=loaded)

    def use_account(self, scenario: Scenario) -> None:
        """Publish the scenario's segments and activations and wait for the worker to hold them."""
        topics = catalogue(self.settings.topic_prefix, self.settings.topic_partitions)
        sends = []
        if scenario.profile.get("segments") or scenario.profile.get("language"):
            segments, language = scenario.profile.get("segments") or [], scenario.profile.get("language")
            sends.append(publish_segments(self.settings, self.codec, topics.profiles, scenario.account_id, segments, language))
        for offer_id, at in (scenario.profile.get("activations") or {}).items():
            sends.append(
                publish_activation(
                    self.settings, self.codec, topics.activations, scenario.account_id, offer_id, True, datetime.fromisoformat(at)
                )
            )
        for send in sends:
            before = self.processed()
            asyncio.run(send)
            self.wait_processed(before, "the account message to be applied")

    def deliver(self, scenario: Scenario) -> None:
        prefix = self.processes.env["TOPIC_PREFIX"]
        for record in scenario.records:
            before = self.processed()
            key = record["account_id"].encode()
            if is_time(record):  # a clock tick for the account's partition, at the step's time
                partition = account_partition(record["account_id"], self.settings.topic_partitions)
                value = self.codec.encode("clock_tick", {"partition": partition, "now": record["occurred_at"]})
                self.publish(prefix + "clock", str(partition).encode(), value, partition)
            elif "instruction" in record:  # operations' release or forfeit, on the instructions topic
                instruction = {k: v for k, v in record.items() if k != "event_type"}
                self.publish(prefix + "account-instructions", key, self.codec.encode("account_instruction", instruction))
            elif "minimums" in record or "payout_id" in record:  # a payout run, or the bank's answer: on their topics
                subject, topic = ("payout_run", "payout-runs") if "minimums" in record else ("payout_result", "payout-results")
                value = self.codec.encode(subject, {k: v for k, v in record.items() if k != "event_id"})
                self.publish(prefix + topic, key, value)
            else:
                self.publish(topic_for(self.processes.env, record), key, wire(record))
            self.wait_processed(before, f"event {record['event_id']} to be processed")

    async def _ledger(self, scenario: Scenario) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        connection = await asyncpg.connect(self.processes.env["DATABASE_URL"])
        try:
            entries = await connection.fetch(
                "SELECT * FROM ledger_entries WHERE account_id = $1 ORDER BY entry_seq", scenario.account_id
            )
            not_earned = await connection.fetch(
                "SELECT source_event_id, reason, detail FROM purchases_not_earned WHERE account_id = $1"
                " ORDER BY recorded_at, accrual_id",
                scenario.account_id,
            )
        finally:
            await connection.close()
        self.details = [(scenario.labels[r["source_event_id"]], r["reason"], r["detail"]) for r in not_earned]
        return [dict(e) for e in entries], [(scenario.labels[r["source_event_id"]], r["reason"]) for r in not_earned]

    def budgets_used(self, scenario: Scenario) -> dict[str, int]:
        """What the shared campaign budgets the scenario names have used (0: never granted from)."""

        async def read() -> dict[str, int]:
            connection = await asyncpg.connect(self.processes.env["DATABASE_URL"])
            try:
                rows = await connection.fetch(
                    "SELECT offer_id, used_minor FROM offer_budgets WHERE offer_id = ANY($1::text[])", list(scenario.budgets_used)
                )
            finally:
                await connection.close()
            return {key: 0 for key in scenario.budgets_used} | {r["offer_id"]: r["used_minor"] for r in rows}

        return asyncio.run(read())

    def written(self, scenario: Scenario) -> tuple[list[ExpectedEntry], list[tuple[str, str]]]:
        def complete():  # type: ignore[no-untyped-def]
            entries, not_earned = asyncio.run(self._ledger(scenario))
            if len(entries) >= len(scenario.ledger) and len(not_earned) >= len(scenario.not_earned):
                return entries, not_earned
            return None

        entries, not_earned = wait_until(
            complete, 30, f"the ledger of {scenario.name}", interval_s=0.05, observe=lambda: asyncio.run(self._ledger(scenario))
        )
        view = [
            ExpectedEntry(
                label_of(scenario, e["source_event_id"]),
                e["entry_kind"],
                e["debit_book"],
                e["credit_book"],
                e["amount_minor"],
                e["reward_kind"],
                e["offer_id"],
                json.loads(e["explanation"])["reason"],
                e["sponsor_id"] or "bank",  # who funds it (migration 0016): NULL is the bank's own budget
            )
            for e in entries
        ]
        return view, not_earned

    def notifications(self, scenario: Scenario) -> list[ExpectedNotification]:
        """What the account was told, as a bank app reads the notifications topic (its partition, in
        order), each id once (a consumer dedupes by id)."""
        assert scenario.notifications is not None

        def complete() -> list[dict[str, Any]] | None:
            read = notifications_of(self.processes.env, scenario.account_id)
            return read if len(read) >= len(scenario.notifications or []) else None

        read = wait_until(complete, 30, f"the notifications of {scenario.name}")
        return [notification_view(scenario, n) for n in read]

    def history(self, scenario: Scenario) -> list[dict[str, Any]]:
        """The account's history as a bank app reads it (the newest first; one page is enough here)."""
        account = scenario.account_id
        response = httpx.get(
            f"{self.base_url}/v1/accounts/{account}/history", headers=api_headers([ACCOUNTS_READ], [account]), timeout=5
        )
        response.raise_for_status()
        lines: list[dict[str, Any]] = response.json()["entries"]
        return lines

    def balances(self, scenario: Scenario) -> dict[tuple[str, str], dict[str, int]]:
        account = scenario.account_id
        response = httpx.get(
            f"{self.base_url}/v1/accounts/{account}/balances", headers=api_headers([ACCOUNTS_READ], [account]), timeout=5
        )
        if response.status_code == 404:
            return {}
        response.raise_for_status()
        return {
            (line["reward_kind"], line["currency"]): {name: line[name] for name in BALANCE_FIELDS}
            for line in response.json()["balances"]
        }


@pytest.fixture(scope="module")
def conformance(request: pytest.FixtureRequest, kafka_bootstrap: str, postgres_url: str, work_dir: Path) -> Iterator[Conformance]:
    # No offers to start with (each scenario brings its own), and an hourly clock: the scenarios
    # say when time passes.
    with running_pipeline(
        request, kafka_bootstrap, postgres_url, work_dir, "conf", SINK_BATCH_WAIT_MS="20", CLOCK_INTERVAL_S="3600"
    ) as (processes, base_url):
        running = Conformance(processes, base_url)
        try:
            yield running
        finally:
            running.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_end_to_end(conformance: Conformance, scenario: Scenario) -> None:
    conformance.use_offers(scenario)
    conformance.use_account(scenario)
    conformance.deliver(scenario)
    ledger, not_earned = conformance.written(scenario)
    assert comparable(ledger, scenario.ledger) == scenario.ledger
    assert sorted(not_earned) == sorted(scenario.not_earned)
    for label, reason, offer_id in scenario.not_earned_offers:  # the line names its offer (the table keeps no offer id)
        assert any(x[:2] == (label, reason) and names_offer(x[2], offer_id) for x in conformance.details), (label, offer_id)
    if scenario.budgets_used:
        assert conformance.budgets_used(scenario) == scenario.budgets_used
    if scenario.notifications is not None:  # what the customer is told (stream.core.notices)
        told = conformance.notifications(scenario)
        assert comparable_notifications(told, scenario.notifications) == scenario.notifications
    expiries = sum(1 for line in scenario.ledger if line.kind == "AVAILABLE_EXPIRED")
    if expiries:  # the customer's history explains each expiry (stream.core.expiry)
        explained = [line for line in conformance.history(scenario) if line["entry_kind"] == "AVAILABLE_EXPIRED"]
        assert len(explained) == expiries
        assert all(line["explanation"]["detail"].startswith("expired unused: ") for line in explained), explained
    wait_until(
        lambda: conformance.balances(scenario) == scenario.balances,
        15,
        f"the balances of {scenario.name}",
        interval_s=0.05,
        observe=lambda: conformance.balances(scenario),
    )
