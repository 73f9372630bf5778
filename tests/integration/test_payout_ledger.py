"""The ledger takes cash payouts (migration 0017, accrual v7): PAID_OUT and PAYOUT_RETURNED entries fold into
balances.paid_out_minor and available_minor exactly as the engine's oracle says, a replay changes nothing, and an
entry of another shape touching PAID_OUT is refused."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from schemas.codec import Codec
from stream.core.balances import balances
from stream.core.entries import Entry
from stream.core.payouts import payout_id, payout_result_event, payout_run_event
from stream.core.rules import decide
from stream.core.state import AccountState
from stream.sink import staging_row
from stream.store.journal import write_batch
from stream.store.migrations import migrate
from tests.factories import T0, book, card_event, offer
from tests.integration.conftest import fresh_database

pytestmark = pytest.mark.integration

CODEC = Codec()
OFFERS = book(offer(pending_days=0))  # 5% at supermarkets, AVAILABLE at the clearing


def rows_of(entries: list[Entry]) -> list[tuple[Any, ...]]:
    rows = []
    for position, entry in enumerate(entries):
        raw = CODEC.encode("accrual", entry.record())
        rows.append(staging_row(position, CODEC.decode(raw)[1], raw))
    return rows


def payout_story(account: str) -> list[Entry]:
    """Purchases, a run paid, rejected, paid again and confirmed, then a clawback: AVAILABLE below zero."""
    at = T0 + timedelta(days=1)
    events = []
    for n, amount in enumerate((40_000, 20_000)):
        for kind in ("AUTHORIZATION", "CLEARING"):
            events.append(
                card_event(kind, amount, event_id=f"{account}-{kind[0]}{n}", transaction_ref=f"t{n}", account_id=account)
            )
    events += [
        payout_run_event(account, "r1", at, {"EUR": 1_000}),
        payout_result_event(account, payout_id("r1", account, "EUR"), "REJECTED", at + timedelta(hours=1), "account_closed"),
        payout_run_event(account, "r2", at + timedelta(days=1), {"EUR": 1_000}),
        payout_result_event(account, payout_id("r2", account, "EUR"), "CONFIRMED", at + timedelta(days=1, hours=1)),
        card_event(
            "REFUND",
            40_000,
            event_id=f"{account}-refund",
            transaction_ref="rf",
            original_transaction_ref="t0",
            processing_code="REFUND",
            account_id=account,
            occurred_at=at + timedelta(days=2),
        ),
    ]
    state: AccountState | None = None
    entries: list[Entry] = []
    for event in events:
        decision = decide(event, OFFERS, state)
        state = decision.state
        entries += decision.entries
    return entries


@pytest.fixture()
def database(postgres_url: str) -> str:
    return fresh_database(postgres_url)


def test_payouts_fold_into_balances_as_the_engine_says_and_a_replay_changes_nothing(database: str) -> None:
    entries = payout_story("acct-pay-1") + payout_story("acct-pay-2")
    assert {"PAID_OUT", "PAYOUT_RETURNED"} <= {e.entry_kind for e in entries}
    expected = balances(entries)
    assert expected[("acct-pay-1", "CASH", "EUR")] == {
        "pending_minor": 0,
        "confirmed_minor": 0,
        "available_minor": -2_000,  # 20.00 clawed back after 30.00 was paid out
        "lifetime_earned_minor": 3_000,
        "clawed_back_minor": 2_000,
        "donated_minor": 0,
        "held_minor": 0,
        "paid_out_minor": 3_000,
        "redeemed_minor": 0,
    }
    rows = rows_of(entries)

    async def scenario() -> None:
        connection = await asyncpg.connect(database)
        try:
            await migrate(connection)
            for start in range(0, len(rows), 5):  # batches cut through the stories
                await write_batch(connection, rows[start : start + 5])
            got = {
                (r["account_id"], r["reward_kind"], r["currency"]): {f: r[f] for f in next(iter(expected.values()))}
                for r in await connection.fetch("SELECT * FROM balances")
            }
            assert got == expected
            replay = await write_batch(connection, rows)
            assert (replay.written, replay.conflicts) == (0, ())
            line = await connection.fetchrow(
                "SELECT paid_out_minor, available_minor FROM balances WHERE account_id = 'acct-pay-2'"
            )
            assert tuple(line) == (3_000, -2_000)
            lines = await connection.fetch(
                "SELECT entry_kind, transaction_ref, explanation->>'detail' AS detail FROM ledger_entries"
                " WHERE account_id = 'acct-pay-1' AND entry_kind IN ('PAID_OUT', 'PAYOUT_RETURNED') ORDER BY transaction_ref, entry_kind"
            )
            r1, r2 = payout_id("r1", "acct-pay-1", "EUR"), payout_id("r2", "acct-pay-1", "EUR")
            assert [(r["entry_kind"], r["transaction_ref"], r["detail"]) for r in lines] == [
                ("PAID_OUT", r1, f"paid out 30.00 EUR to the customer's bank account (payout {r1}, run r1; minimum 10.00 EUR)"),
                (
                    "PAYOUT_RETURNED",
                    r1,
                    f"payout {r1} of run r1 rejected by the bank (account_closed): 30.00 EUR back to AVAILABLE",
                ),
                ("PAID_OUT", r2, f"paid out 30.00 EUR to the customer's bank account (payout {r2}, run r2; minimum 10.00 EUR)"),
            ]
        finally:
            await connection.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "change",
    [
        {"debit_book": "EXPENSE"},  # paid out of the bank's expense, not the customer's AVAILABLE
        {"reward_kind": "POINTS", "currency": "PTS"},  # points are never paid out
        {"offer_id": "grocery-5"},  # a payout is no offer's
        {"entry_kind": "MADE_AVAILABLE"},  # PAID_OUT moved by another kind
    ],
)
def test_an_entry_of_another_shape_touching_paid_out_is_refused(database: str, change: dict[str, Any]) -> None:
    (paid,) = [e for e in payout_story("acct-bad") if e.entry_kind == "PAID_OUT"][:1]
    record = {**paid.record(), **change, "accrual_id": "bad#0"}
    raw = CODEC.encode("accrual", record)
    row = staging_row(0, CODEC.decode(raw)[1], raw)

    async def scenario() -> None:
        connection = await asyncpg.connect(database)
        try:
            await migrate(connection)
            with pytest.raises(asyncpg.CheckViolationError):
                await write_batch(connection, [row])
            assert await connection.fetchval("SELECT count(*) FROM ledger_entries") == 0
            assert await connection.fetchval("SELECT count(*) FROM balances") == 0
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_a_wallet_mark_is_kept_out_of_the_history_and_the_next_opening_reads_it(database: str) -> None:
    """An account whose recent events moved no money: the opening's WALLET_MARK goes through the sink into
    purchases_not_earned (migration 0020), the customer's history does not show it, and the opening the command
    builds from the ledger then (latest entry, latest mark, AVAILABLE) opens the wallet."""
    from stream.core.memory import RECENT_EVENTS_LIMIT
    from stream.core.outcomes import Outcome
    from stream.core.payouts import open_wallet_event
    from stream.payout_runs import ledger_wallets
    from stream.store.reads import history
    from tests.unit.test_payouts import RUN_AT, quiet_account_without_wallet

    account = quiet_account_without_wallet()
    marked = account.feed(open_wallet_event("acct-1", "open-1", RUN_AT, "ops", None, []))
    assert marked.outcome is Outcome.WALLET_MARKED

    async def scenario() -> tuple[str | None, str | None, list[tuple[str, str, int]]]:
        connection = await asyncpg.connect(database)
        try:
            await migrate(connection)
            rows = rows_of(list(account.rows.values()))
            assert (await write_batch(connection, rows)).conflicts == ()
            assert (await write_batch(connection, rows)).written == 0  # a replay writes nothing, the mark included
            kinds = await connection.fetch("SELECT line_kind, count(*) FROM purchases_not_earned GROUP BY 1 ORDER BY 1")
            assert [tuple(k) for k in kinds] == [("NOT_EARNED", RECENT_EVENTS_LIMIT + 1), ("WALLET_MARK", 1)]
            pool = await asyncpg.create_pool(database, min_size=1, max_size=1)
            try:
                lines = await history(pool, "acct-1", None, 100)
            finally:
                await pool.close()
            assert len(lines) == len(account.rows) - 1 and "WALLET_MARK" not in {line["entry_kind"] for line in lines}
        finally:
            await connection.close()
        return (await ledger_wallets(database, ["acct-1"]))["acct-1"]

    last, mark, available = asyncio.run(scenario())
    assert mark == marked.entries[0].accrual_id and last == max(r for r in account.rows if r.startswith("c-t1"))
    opened = account.feed(open_wallet_event("acct-1", "open-2", RUN_AT, "ops", last, available, mark))
    assert opened.outcome is Outcome.WALLET_OPENED and account.state.wallet == {"CASH:EUR": 2_000}
