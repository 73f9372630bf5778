"""The operators' payouts table (migration 0019) on the real broker and Postgres: customers' payouts follow their
PAID_OUT entries (the ledger's trigger) and the core banking system's answers (read by the sink process), in either
order, the first answer standing; an erasure pseudonymises them with the ledger; the API lists every payout and a
charity's remittances for operations only (401, 403, 404, 400); the gauges count the unanswered ones. The stack and
the helpers are test_donations_end_to_end's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from schemas.codec import Codec
from stream.api import create_app
from stream.api_payouts import PayoutGauges
from stream.auth import ACCOUNTS_READ, OPERATIONS
from stream.core.entries import Entry
from stream.core.payouts import payout_id, payout_run_event
from stream.core.rules import decide
from stream.core.state import AccountState
from stream.metrics import PAYOUT_OLDEST_UNANSWERED, PAYOUTS_UNANSWERED
from stream.settings import Settings
from tests.factories import T0, card_event
from tests.integration.conftest import Processes, api_headers, wait_until
from tests.integration.test_api import _run
from tests.integration.test_donations_end_to_end import (
    CASH,
    DONATED,
    RED_CROSS,
    charity_answer,
    customer_answer,
    payout_rows,
    query,
    remit,
    sink_stack,
    write_entries,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, kafka_bootstrap: str, postgres_url: str, work_dir: Path) -> Iterator[Processes]:
    with sink_stack(request, kafka_bootstrap, postgres_url, work_dir) as processes:
        yield processes


def paid_out(account: str, run_id: str) -> list[Entry]:
    """A purchase making 20.00 AVAILABLE, then run ``run_id`` paying it: its PAID_OUT entry among the entries."""
    at = T0 + timedelta(days=1)
    events = [
        card_event(kind, 40_000, event_id=f"{account}-{kind[0]}", transaction_ref="t", account_id=account)
        for kind in ("AUTHORIZATION", "CLEARING")
    ] + [payout_run_event(account, run_id, at, {"EUR": 1_000})]
    state: AccountState | None = None
    entries: list[Entry] = []
    for event in events:
        decision = decide(event, CASH, state)
        state, entries = decision.state, entries + list(decision.entries)
    assert [e.transaction_ref for e in entries if e.entry_kind == "PAID_OUT"] == [payout_id(run_id, account, "EUR")]
    return entries


def test_customers_payouts_follow_their_entries_and_answers_in_either_order(stack: Processes) -> None:
    env, database = stack.env, stack.env["DATABASE_URL"]
    first_asked, first_answered = "cu-asked", "cu-answered"
    asked_id, answered_id = payout_id("c1", first_asked, "EUR"), payout_id("c1", first_answered, "EUR")

    write_entries(database, paid_out(first_asked, "c1"))  # the request first (the ledger's trigger)
    assert payout_rows(database, "CUSTOMER")[asked_id] == (2_000, "REQUESTED", None, False)
    customer_answer(env, asked_id, first_asked, "REJECTED", "account_closed")

    customer_answer(env, answered_id, first_answered, "CONFIRMED")  # the answer first: a row without amount
    wait_until(lambda: payout_rows(database, "CUSTOMER").get(answered_id) == (None, "CONFIRMED", None, False), 30, "the answer")
    write_entries(database, paid_out(first_answered, "c1"))
    customer_answer(env, asked_id, first_asked, "CONFIRMED")  # a late answer: the first stands
    wait_until(
        lambda: (
            payout_rows(database, "CUSTOMER")
            == {asked_id: (2_000, "REJECTED", "account_closed", False), answered_id: (2_000, "CONFIRMED", None, False)}
        ),
        30,
        "both payouts answered",
        observe=lambda: payout_rows(database, "CUSTOMER"),
    )
    row = query(database, "SELECT * FROM payouts WHERE payout_id = $1", answered_id)[0]
    assert (row["beneficiary_id"], row["run_id"], row["requested_at"]) == (first_answered, "c1", T0 + timedelta(days=1))


def test_an_erased_accounts_payouts_are_pseudonymised_with_its_ledger(stack: Processes) -> None:
    from stream.store.erasure import erase

    env, database = stack.env, stack.env["DATABASE_URL"]
    pid = payout_id("c3", "cu-erased", "EUR")
    write_entries(database, paid_out("cu-erased", "c3"))
    # Another payout of the account answered before its PAID_OUT entry reached the ledger: a row with no amount yet.
    early = payout_id("c4", "cu-erased", "EUR")
    customer_answer(env, early, "cu-erased", "CONFIRMED")
    wait_until(lambda: early in payout_rows(database, "CUSTOMER"), 30, "the answer that came first")

    async def erase_it() -> str:
        connection = await asyncpg.connect(database)
        try:
            return str((await erase(connection, "cu-erased", "ticket-1", "tester")).pseudonym)
        finally:
            await connection.close()

    pseudonym = asyncio.run(erase_it())
    rows = query(database, "SELECT payout_id, beneficiary_id, amount_minor FROM payouts WHERE beneficiary_kind = 'CUSTOMER'")
    assert not [r for r in rows if "cu-erased" in r["payout_id"] or r["beneficiary_id"] == "cu-erased"]
    assert early not in payout_rows(database, "CUSTOMER")  # its entry will never reach the ledger: the row is gone
    (row,) = [r for r in rows if r["beneficiary_id"] == pseudonym]
    ledger = query(
        database, "SELECT transaction_ref FROM ledger_entries WHERE account_id = $1 AND entry_kind = 'PAID_OUT'", pseudonym
    )
    assert (row["payout_id"], row["amount_minor"]) == (ledger[0]["transaction_ref"], 2_000)
    # Its answer, read after the erasure, writes no row naming the account.
    customer_answer(env, pid, "cu-erased", "CONFIRMED")
    customer_answer(env, payout_id("c3", "cu-after", "EUR"), "cu-after", "CONFIRMED")  # a marker behind it
    wait_until(lambda: payout_id("c3", "cu-after", "EUR") in payout_rows(database, "CUSTOMER"), 30, "the marker answer")
    assert pid not in payout_rows(database, "CUSTOMER")


@pytest.fixture()
def settings(stack: Processes) -> Settings:
    return Settings.from_env({**stack.env, "OFFER_RESULTS_INTERVAL_S": "0", "RECONCILE_INTERVAL_S": "0"})


def test_operations_list_the_payouts_and_a_charitys_remittances(stack: Processes, settings: Settings) -> None:
    env, database = stack.env, stack.env["DATABASE_URL"]
    write_entries(database, paid_out("cu-api", "c2"))  # unanswered
    # Red Cross: a remittance rejected, then one confirmed; unicef's, never answered.
    write_entries(database, _run("rc-api-1", RED_CROSS, DONATED))
    remit(stack, "r1")
    charity_answer(env, "d:r1:red-cross:EUR", "red-cross", "REJECTED", "account_closed")
    wait_until(lambda: payout_rows(database, "CHARITY")["d:r1:red-cross:EUR"][1] == "REJECTED", 30, "the rejection")
    remit(stack, "r3")
    charity_answer(env, "d:r3:red-cross:EUR", "red-cross", "CONFIRMED")
    wait_until(lambda: payout_rows(database, "CHARITY")["d:r3:red-cross:EUR"][1] == "CONFIRMED", 30, "the confirmation")

    async def ask() -> dict[str, Any]:
        app = create_app(settings, Codec(), settings.topics())
        found: dict[str, Any] = {}
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
                ops = api_headers([OPERATIONS])
                found["all"] = (await http.get("/v1/operations/payouts", headers=ops)).json()
                found["rejected"] = (await http.get("/v1/operations/payouts?status=REJECTED", headers=ops)).json()
                found["charity"] = (await http.get("/v1/operations/payouts?beneficiary=CHARITY&limit=1", headers=ops)).json()
                cursor = found["charity"]["next_cursor"]
                found["next"] = (
                    await http.get(f"/v1/operations/payouts?beneficiary=CHARITY&limit=1&cursor={cursor}", headers=ops)
                ).json()
                found["remittances"] = (await http.get("/v1/charities/red-cross/remittances", headers=ops)).json()
                statuses = {}
                for name, path, headers in (
                    ("no token", "/v1/operations/payouts", {}),
                    ("customer token", "/v1/operations/payouts", api_headers([ACCOUNTS_READ], ["cu-api"])),
                    ("customer on remittances", "/v1/charities/red-cross/remittances", api_headers([ACCOUNTS_READ], ["cu-api"])),
                    ("unknown charity", "/v1/charities/nobody/remittances", ops),
                    ("bad cursor", "/v1/operations/payouts?cursor=AAAA", ops),
                    ("undeclared query", "/v1/operations/payouts?account=cu-api", ops),
                    ("bad status", "/v1/operations/payouts?status=PAID", ops),
                ):
                    statuses[name] = (await http.get(path, headers=headers)).status_code
                found["statuses"] = statuses
                gauges = await PayoutGauges(app.state.pool, 60).observe(datetime.now(UTC))
                found["gauges"] = {kind: count for kind, (count, _) in gauges.items()}
        return found

    found = asyncio.run(ask())
    assert found["statuses"] == {
        "no token": 401,
        "customer token": 403,
        "customer on remittances": 403,
        "unknown charity": 404,
        "bad cursor": 400,
        "undeclared query": 400,
        "bad status": 422,
    }
    ids = [p["payout_id"] for p in found["all"]["payouts"]]
    assert ids[0] == "d:r3:red-cross:EUR" and payout_id("c2", "cu-api", "EUR") in ids and len(ids) == len(set(ids))
    assert {p["payout_id"] for p in found["rejected"]["payouts"]} >= {"d:r1:red-cross:EUR", payout_id("c1", "cu-asked", "EUR")}
    assert all(p["status"] == "REJECTED" for p in found["rejected"]["payouts"])
    (latest,) = found["charity"]["payouts"]
    assert latest["beneficiary_kind"] == "CHARITY" and found["charity"]["next_cursor"] is not None
    assert found["next"]["payouts"][0]["payout_seq"] < latest["payout_seq"]
    line = next(p for p in found["remittances"]["payouts"] if p["payout_id"] == "d:r3:red-cross:EUR")
    assert (line["amount"], line["status"], line["beneficiary_id"]) == ("5.00 EUR", "CONFIRMED", "red-cross")
    assert {p["beneficiary_id"] for p in found["remittances"]["payouts"]} == {"red-cross"}
    # The unanswered: the customer payout just asked; every remittance was answered.
    assert found["gauges"] == {"CUSTOMER": 1}
    assert PAYOUTS_UNANSWERED.labels("CUSTOMER")._value.get() == found["gauges"]["CUSTOMER"]
    # cu-api's payout was requested at T0 + 1 day (the run's time): long ago.
    assert PAYOUT_OLDEST_UNANSWERED.labels("CUSTOMER")._value.get() > 3600
