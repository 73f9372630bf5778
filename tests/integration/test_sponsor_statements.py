"""Who pays (issue 12, part 6) on the real stack: a merchant-funded offer and a bank-funded one loaded with
``cashback offers load``, card events through Kafka, the worker and the sink into Postgres, then the statements
through the balance API (``GET /v1/operations/sponsors/{id}/statements/{month}`` and its entries) and the
``cashback statement`` command.

The story: a grocery purchase of 100.00 at the merchant-funded 5% offer, authorised on 28 October (5.00 pending),
cleared on 1 November (5.00 confirmed) and 40.00 of it refunded on 3 November (2.00 clawed back); a restaurant
purchase of 50.00 at the bank's 1% in November (0.50). So grocer-co owes nothing for October (5.00 booked, all
still pending at its end) and 3.00 for November (the 5.00 confirmed less the 2.00 clawed back); the bank 0.50."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from stream.auth import ACCOUNTS_READ, OPERATIONS
from tests.factories import card_record
from tests.integration.conftest import REPO_ROOT, Processes, api_headers, running_pipeline, wait_until
from tests.integration.test_end_to_end import publish, topic_for, wire

pytestmark = pytest.mark.integration

OFFERS = """
offers:
  - offer_id: grocer-5
    name: "5% at the grocer, funded by it"
    sponsor: MERCHANT
    sponsor_id: grocer-co
    rate_bps: 500
    mccs: ["5411"]
    pending_days: 60          # nothing becomes available nor expires while the test runs, whatever the clock says
    auth_expiry_days: 60
  - offer_id: dining-1
    name: "1% at restaurants, the bank's"
    rate_bps: 100
    mccs: ["5812"]
    pending_days: 60
  - offer_id: bakery-3
    name: "3% at the bakery, funded by it (nobody buys there in the story)"
    sponsor: MERCHANT
    sponsor_id: quiet-co
    rate_bps: 300
    mccs: ["5462"]
"""
ROUTE = "/v1/operations/sponsors/{}/statements/{}"


class Story:
    def __init__(self, processes: Processes, base_url: str) -> None:
        self.processes, self.base_url = processes, base_url
        tag = uuid.uuid4().hex[:6]
        self.shopper, self.diner = f"who-pays-{tag}-a", f"who-pays-{tag}-b"

    def entries(self, account: str) -> int:
        async def count() -> int:
            connection = await asyncpg.connect(self.processes.env["DATABASE_URL"])
            try:
                return int(await connection.fetchval("SELECT count(*) FROM ledger_entries WHERE account_id = $1", account))
            finally:
                await connection.close()

        return asyncio.run(count())

    def send(self, record: dict[str, Any], entries_then: int) -> None:
        """One card event; waits until the account's ledger holds ``entries_then`` entries (so the next event is
        judged after it, whatever topic it goes to)."""
        env = self.processes.env
        message = (topic_for(env, record), record["account_id"].encode(), wire(record))
        asyncio.run(publish(env["KAFKA_BOOTSTRAP_SERVERS"], [message]))
        account = record["account_id"]
        wait_until(lambda: self.entries(account) >= entries_then, 60, f"{record['event_type']} of {account} in the ledger")

    def play(self) -> None:
        def event(event_type: str, account: str, ref: str, amount: int, at: datetime, **fields: Any) -> dict[str, Any]:
            return card_record(
                event_type,
                amount,
                event_id=f"{account}-{event_type.lower()}-{ref}",
                account_id=account,
                transaction_ref=ref,
                occurred_at=at,
                **fields,
            )

        self.send(event("AUTHORIZATION", self.shopper, "t1", 10_000, datetime(2026, 10, 28, 18, tzinfo=UTC)), 1)
        self.send(event("CLEARING", self.shopper, "t1", 10_000, datetime(2026, 11, 1, 10, tzinfo=UTC)), 2)
        refund = event(
            "REFUND",
            self.shopper,
            "r1",
            4_000,
            datetime(2026, 11, 3, 9, tzinfo=UTC),
            original_transaction_ref="t1",
            processing_code="REFUND",
        )
        self.send(refund, 3)
        dining = {"mcc": "5812", "merchant_id": "m-bistro", "merchant_name": "Bistro"}
        self.send(event("AUTHORIZATION", self.diner, "d1", 5_000, datetime(2026, 11, 2, 20, tzinfo=UTC), **dining), 1)
        self.send(event("CLEARING", self.diner, "d1", 5_000, datetime(2026, 11, 3, 20, tzinfo=UTC), **dining), 2)

    def get(self, path: str, scopes: tuple[str, ...] = (OPERATIONS,), **params: Any) -> httpx.Response:
        return httpx.get(self.base_url + path, params=params, headers=api_headers(scopes), timeout=10)


@pytest.fixture(scope="module")
def story(request: pytest.FixtureRequest, kafka_bootstrap: str, postgres_url: str, work_dir: Path) -> Iterator[Story]:
    offers = work_dir / f"who-pays-{uuid.uuid4().hex[:6]}.yaml"
    offers.write_text(OFFERS)
    with running_pipeline(
        request, kafka_bootstrap, postgres_url, work_dir, "who-pays", offers, SINK_BATCH_WAIT_MS="20", CLOCK_INTERVAL_S="3600"
    ) as (
        processes,
        base_url,
    ):
        played = Story(processes, base_url)
        played.play()
        yield played


def _line(body: dict[str, Any]) -> dict[str, Any]:
    (line,) = body["lines"]
    return {
        k: line[k]
        for k in (
            "booked_minor",
            "returned_minor",
            "net_minor",
            "pending_minor",
            "owed_minor",
            "clawed_back_minor",
            "purchases",
            "entries",
        )
    }


def test_every_entry_of_the_merchant_funded_purchase_names_its_sponsor_in_the_ledger(story: Story) -> None:
    async def read() -> list[tuple[str, str | None]]:
        connection = await asyncpg.connect(story.processes.env["DATABASE_URL"])
        try:
            rows = await connection.fetch(
                "SELECT entry_kind, sponsor_id FROM ledger_entries WHERE account_id = ANY($1::text[]) ORDER BY entry_seq",
                [story.shopper, story.diner],
            )
        finally:
            await connection.close()
        return [(r["entry_kind"], r["sponsor_id"]) for r in rows]

    found = asyncio.run(read())
    assert [s for k, s in found if s is not None] == ["grocer-co"] * 3
    assert sorted(k for k, s in found if s == "grocer-co") == ["CLAWED_BACK", "CONFIRMED", "PENDING_CREATED"]
    assert sorted(k for k, s in found if s is None) == ["CONFIRMED", "PENDING_CREATED"]


def test_the_merchant_owes_nothing_for_october_and_the_confirmed_less_the_clawed_back_for_november(story: Story) -> None:
    october = story.get(ROUTE.format("grocer-co", "2026-10"))
    assert october.status_code == 200, october.text
    assert _line(october.json()) == {
        "booked_minor": 500,
        "returned_minor": 0,
        "net_minor": 500,
        "pending_minor": 500,
        "owed_minor": 0,
        "clawed_back_minor": 0,
        "purchases": 1,
        "entries": 1,
    }
    november = story.get(ROUTE.format("grocer-co", "2026-11"))
    assert november.status_code == 200, november.text
    body = november.json()
    assert (body["sponsor_id"], body["month"]) == ("grocer-co", "2026-11")
    assert (body["period_from"], body["period_to"]) == ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
    assert _line(body) == {
        "booked_minor": 0,
        "returned_minor": 200,
        "net_minor": -200,
        "pending_minor": -500,
        "owed_minor": 300,
        "clawed_back_minor": 200,
        "purchases": 0,  # first paid in October
        "entries": 2,
    }
    assert body["lines"][0]["owed"] == "3.00 EUR" and body["lines"][0]["unit"] == "EUR"
    assert [o["offer_id"] for o in body["offers"]] == ["grocer-5"]
    assert body["offers"][0]["lines"] == body["lines"]


def test_the_bank_s_own_budget_has_its_statement(story: Story) -> None:
    november = story.get(ROUTE.format("bank", "2026-11"))
    assert november.status_code == 200, november.text
    assert _line(november.json())["owed_minor"] == 50 and _line(november.json())["purchases"] == 1
    assert [o["offer_id"] for o in november.json()["offers"]] == ["dining-1"]


def test_the_entries_behind_a_statement_come_a_page_at_a_time(story: Story) -> None:
    path = ROUTE.format("grocer-co", "2026-11") + "/entries"
    first = story.get(path, limit=1)
    assert first.status_code == 200, first.text
    (confirmed,) = first.json()["entries"]
    assert (confirmed["entry_kind"], confirmed["amount"], confirmed["offer_id"]) == ("CONFIRMED", "5.00 EUR", "grocer-5")
    cursor = first.json()["next_cursor"]
    assert cursor
    second = story.get(path, limit=1, cursor=cursor).json()
    assert [e["entry_kind"] for e in second["entries"]] == ["CLAWED_BACK"] and second["entries"][0]["purchase_ref"] == "t1"
    last = story.get(path, limit=1, cursor=second["next_cursor"]).json() if second["next_cursor"] else {"entries": []}
    assert last["entries"] == []


def test_refusals_unknown_sponsor_bad_month_and_scope(story: Story) -> None:
    unknown = story.get(ROUTE.format("nobody-co", "2026-11"))
    assert unknown.status_code == 404 and "nobody-co" in unknown.text
    for month in ("2026-13", "november", "2026-1"):
        bad = story.get(ROUTE.format("grocer-co", month))
        assert bad.status_code == 422 and "pattern" in bad.text, (month, bad.text)
    quiet = story.get(ROUTE.format("grocer-co", "2026-09"))
    assert quiet.status_code == 200 and quiet.json()["lines"] == [] and quiet.json()["offers"] == []
    live_only = story.get(ROUTE.format("quiet-co", "2026-11"))  # funds a live offer, no entry yet
    assert live_only.status_code == 200 and live_only.json()["lines"] == []
    assert story.get(ROUTE.format("grocer-co", "2026-11"), scopes=(ACCOUNTS_READ,)).status_code == 403


def test_the_statement_command_prints_it_and_refuses_a_bad_month_in_one_line(story: Story) -> None:
    printed = story.processes.cli("statement", "--sponsor", "grocer-co", "--month", "2026-11")
    assert "merchant sponsor grocer-co for 2026-11" in printed and "3.00 EUR" in printed and "grocer-5" in printed
    refused = subprocess.run(
        [sys.executable, "-m", "stream", "statement", "--sponsor", "grocer-co", "--month", "2026-13"],
        env=story.processes.env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "YYYY-MM" in refused.stderr and "Traceback" not in refused.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "stream", "statement", "--sponsor", "nobody-co", "--month", "2026-11"],
        env=story.processes.env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and "nobody-co" in unknown.stderr and "Traceback" not in unknown.stderr
    # a sponsor no ledger entry carries yet but a live offer names: its statement, empty (as the API answers it)
    quiet = story.processes.cli("statement", "--sponsor", "quiet-co", "--month", "2026-11")
    assert "merchant sponsor quiet-co for 2026-11" in quiet and "no lines" in quiet
