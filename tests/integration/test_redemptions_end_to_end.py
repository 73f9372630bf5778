"""Redemptions end to end on the real broker and Postgres, through the API: card events make points
AVAILABLE, a bank app's token with ``cashback:redemptions.write`` redeems some with an idempotency key
(201), the same key again answers from the ledger and redeems nothing more, the same key with another body
is a 409, a redemption above the balance a 409 with its reason, and a token without the scope a 403 (no
token a 401). The ledger, the balances and the history show it line by line. A worker killed in the middle
of a bank app's redemptions, each asked twice, redeems each once."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from stream.auth import ACCOUNTS_READ, OPERATIONS, REDEMPTIONS_WRITE
from tests.factories import card_record
from tests.integration.conftest import api_headers, rows_of, running_pipeline, wait_for_each
from tests.integration.test_end_to_end import balance, publish_records
from tests.integration.test_payouts_end_to_end import wait_until

pytestmark = pytest.mark.integration

OFFERS = """
offers:
  - offer_id: dining-points
    name: "2 points per euro at restaurants, a year to use them"
    reward_kind: POINTS
    points_per_unit: 2
    currency: EUR
    mccs: ["5812"]
    pending_days: 0
    available_expiry_days: 365
  - offer_id: grocery-points
    name: "1 point per euro at supermarkets, never expiring"
    reward_kind: POINTS
    points_per_unit: 1
    currency: EUR
    mccs: ["5411"]
    pending_days: 0
"""


def purchase(account: str, ref: str, amount: int, mcc: str) -> list[dict[str, Any]]:
    return [
        card_record(kind, amount, account_id=account, transaction_ref=ref, event_id=f"{ref}-{kind}", mcc=mcc)
        for kind in ("AUTHORIZATION", "CLEARING")
    ]


def redeem(
    base_url: str, account: str, key: str | None, body: dict[str, Any], scopes: Any = (REDEMPTIONS_WRITE,)
) -> httpx.Response:
    headers = api_headers(scopes, [account])
    if key is not None:
        headers["Idempotency-Key"] = key
    return httpx.post(f"{base_url}/v1/accounts/{account}/redemptions", json=body, headers=headers, timeout=30)


def points(base_url: str, account: str) -> tuple[int, int] | None:
    line = balance(base_url, account)
    return None if line is None else (line["available_minor"], line["redeemed_minor"])


def ledger_lines(env: dict[str, str], account: str) -> list[tuple[Any, ...]]:
    async def read() -> list[tuple[Any, ...]]:
        connection = await asyncpg.connect(env["DATABASE_URL"])
        try:
            entries = await connection.fetch(
                "SELECT accrual_id, entry_kind, debit_book, credit_book, amount_minor FROM ledger_entries"
                " WHERE account_id = $1 AND entry_kind = 'REDEEMED' ORDER BY accrual_id",
                account,
            )
            refused = await connection.fetch(
                "SELECT accrual_id, line_kind, reason, basis_minor FROM purchases_not_earned"
                " WHERE account_id = $1 AND line_kind = 'REDEMPTION_REFUSED' ORDER BY accrual_id",
                account,
            )
            return [tuple(r) for r in entries] + [tuple(r) for r in refused]
        finally:
            await connection.close()

    return asyncio.run(read())


def test_points_redeemed_through_the_api_once_per_key_and_refused_above_the_balance(
    request: pytest.FixtureRequest, kafka_bootstrap: str, postgres_url: str, work_dir: Path
) -> None:
    offers = work_dir / "redemption-offers.yaml"
    offers.write_text(OFFERS)
    with running_pipeline(
        request, kafka_bootstrap, postgres_url, work_dir, "redemptions", offers, API_REDEMPTION_WAIT_S="10"
    ) as (
        processes,
        base_url,
    ):
        env = processes.env
        account = "redeem-a"
        publish_records(env, purchase(account, "t1", 10_000, "5812") + purchase(account, "t2", 5_000, "5411"))
        wait_until(
            lambda: points(base_url, account) == (250, 0), 60, "250 points available", observe=lambda: points(base_url, account)
        )
        body = {"reward_kind": "POINTS", "unit": "PTS", "amount_minor": 220, "reference": "gift-card-25"}

        # Without a token, or with a token that only reads balances: nothing is spent.
        no_token = httpx.post(f"{base_url}/v1/accounts/{account}/redemptions", json=body, headers={"Idempotency-Key": "k1"})
        assert no_token.status_code == 401
        reader = redeem(base_url, account, "k1", body, scopes=(ACCOUNTS_READ, OPERATIONS))
        assert reader.status_code == 403, reader.text
        other = httpx.post(
            f"{base_url}/v1/accounts/{account}/redemptions",
            json=body,
            headers={**api_headers([REDEMPTIONS_WRITE], ["someone-else"]), "Idempotency-Key": "k1"},
        )
        assert other.status_code == 404  # a token acting for another account
        # Bad requests: no key, a bad key, cash, zero, points in euros.
        assert redeem(base_url, account, None, body).status_code == 422
        assert redeem(base_url, account, "bad key!", body).status_code == 422
        cash = redeem(base_url, account, "k9", {**body, "reward_kind": "CASH", "unit": "EUR"})
        assert cash.status_code == 422 and "only POINTS and STORE_CREDIT are redeemed" in cash.text
        assert redeem(base_url, account, "k9", {**body, "amount_minor": 0}).status_code == 422
        assert redeem(base_url, account, "k9", {**body, "unit": "EUR"}).status_code == 422

        # Redeemed: 201, the dining lot first (the oldest), then the points that never expire.
        first = redeem(base_url, account, "k1", body)
        assert first.status_code == 201, first.text
        made = first.json()
        assert (made["status"], made["amount_minor"], made["available_change_minor"], made["reason"]) == (
            "REDEEMED",
            220,
            -220,
            "redeemed",
        )
        assert made["redemption_id"] == f"r:{account}:k1" and made["reference"] == "gift-card-25"
        assert "200 PTS of dining-points made available on" in made["detail"] and "20 PTS not expiring" in made["detail"]
        assert (made["balance"]["available_minor"], made["balance"]["redeemed_minor"]) == (30, 220)
        # The same key again: answered from the ledger, nothing more redeemed.
        again = redeem(base_url, account, "k1", body)
        assert again.status_code == 201 and again.json()["recorded_at"] == made["recorded_at"]
        # The same key with another body: refused, nothing redeemed.
        reused = redeem(base_url, account, "k1", {**body, "amount_minor": 10})
        assert reused.status_code == 409 and reused.json()["reason"] == "idempotency_key_reused"
        assert reused.json()["detail"] == "idempotency key reused with a different request"
        # Above the balance: refused with its reason; another key then redeems the rest exactly.
        above = redeem(base_url, account, "k2", {**body, "amount_minor": 31})
        assert above.status_code == 409, above.text
        assert above.json()["reason"] == "insufficient_balance" and "30 PTS available" in above.json()["detail"]
        assert redeem(base_url, account, "k2", {**body, "amount_minor": 31}).status_code == 409  # from the ledger
        rest = redeem(base_url, account, "k3", {"reward_kind": "POINTS", "unit": "PTS", "amount_minor": 30})
        assert rest.status_code == 201, rest.text
        assert points(base_url, account) == (0, 250)

        # The GET: the redemption as the ledger holds it, for the redeemer and the account's readers; 404 otherwise.
        got = httpx.get(f"{base_url}/v1/accounts/{account}/redemptions/k2", headers=api_headers([ACCOUNTS_READ], [account]))
        assert got.status_code == 200 and got.json()["status"] == "REFUSED"
        missing = httpx.get(
            f"{base_url}/v1/accounts/{account}/redemptions/nope", headers=api_headers([REDEMPTIONS_WRITE], [account])
        )
        assert missing.status_code == 404

        # The ledger: one entry per redemption, one refusal line; the history explains each.
        assert ledger_lines(env, account) == [
            (f"r:{account}:k1#0", "REDEEMED", "AVAILABLE", "REDEEMED", 220),
            (f"r:{account}:k3#0", "REDEEMED", "AVAILABLE", "REDEEMED", 30),
            (f"r:{account}:k2#0", "REDEMPTION_REFUSED", "insufficient_balance", 31),
        ]
        history = httpx.get(f"{base_url}/v1/accounts/{account}/history", headers=api_headers([ACCOUNTS_READ], [account])).json()
        kinds = [line["entry_kind"] for line in history["entries"]]
        assert kinds.count("REDEEMED") == 2 and kinds.count("REDEMPTION_REFUSED") == 1
        assert processes.metric("worker", "cashback_events_consumed_total", {"event_type": "REDEEM", "outcome": "redeemed"}) == 2

        # The local stack's bank app (make run): one round redeems about half of what another account holds.
        publish_records(env, purchase("redeem-b", "t3", 5_000, "5411"))
        wait_until(lambda: points(base_url, "redeem-b") == (50, 0), 60, "50 points available for redeem-b")
        done = asyncio.run(bank_app_round(env, base_url))
        assert [(ask.account_id, ask.amount_minor, status) for ask, status in done] == [("redeem-b", 25, 201)]
        assert points(base_url, "redeem-b") == (25, 25)


async def bank_app_round(env: dict[str, str], base_url: str) -> list[Any]:
    from stream.localstack.bank_app import redeem_round
    from tests.integration.conftest import API_AUDIENCE, API_ISSUER, API_KEY

    pool = await asyncpg.create_pool(env["DATABASE_URL"], min_size=1, max_size=1)
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            return await redeem_round(pool, client, API_KEY, API_AUDIENCE, "it", 1, issuer=API_ISSUER)
    finally:
        await pool.close()


def test_a_worker_killed_in_the_middle_of_redemptions_redeems_each_once(
    request: pytest.FixtureRequest, kafka_bootstrap: str, postgres_url: str, work_dir: Path
) -> None:
    """Customers' points spent under kill -9. A bank app asks 3 redemptions of 30 points of each of 400
    accounts holding 100, each asked twice (a retry with the same key and body, as after a time-out), while
    the worker is stopped (the API answers 202: not decided yet). The worker started is killed once some are
    redeemed and others not yet, and started again; the bank app then asks each once more. Every redemption
    is redeemed once (one REDEEMED line under its id, none refused), every account keeps 10 points, and
    the last asks are answered 201 from the ledger."""
    offers = work_dir / "redemption-kill-offers.yaml"
    offers.write_text(OFFERS)
    accounts, each = 400, 3
    total = accounts * each
    with running_pipeline(
        request,
        kafka_bootstrap,
        postgres_url,
        work_dir,
        "redeem-kill",
        offers,
        API_REDEMPTION_WAIT_S="0",
        WORKER_INSTANCE_ID="w-r",
    ) as (processes, base_url):
        env, database_url = processes.env, processes.env["DATABASE_URL"]
        prefix = f"redk-{uuid.uuid4().hex[:6]}-"
        names = [f"{prefix}{n}" for n in range(accounts)]

        def held() -> list[tuple[Any, ...]]:
            query = "SELECT available_minor, redeemed_minor FROM balances WHERE account_id LIKE $1 AND currency = 'PTS'"
            return rows_of(database_url, query, f"{prefix}%")

        publish_records(env, [record for name in names for record in purchase(name, f"{name}-t", 10_000, "5411")])
        wait_for_each(held, (100, 0), accounts, "100 points available on every account")
        processes.stop("worker")
        body = {"reward_kind": "POINTS", "unit": "PTS", "amount_minor": 30}
        asks = [(name, f"k{n}") for n in range(each) for name in names]

        def ask_all() -> Counter[int]:
            with httpx.Client(base_url=base_url, timeout=30) as client:
                return Counter(
                    client.post(
                        f"/v1/accounts/{name}/redemptions",
                        json=body,
                        headers={**api_headers((REDEMPTIONS_WRITE,), [name]), "Idempotency-Key": key},
                    ).status_code
                    for name, key in asks
                )

        assert ask_all() == Counter({202: total})
        assert ask_all() == Counter({202: total})  # asked again, nothing decided yet: the same events
        processes.start("worker", "worker", env={"METRICS_PORT": str(processes.metrics_ports["worker"])})
        processes.kill_in_the_middle({"event_type": "REDEEM", "outcome": "redeemed"}, total // 5, total)
        wait_for_each(held, (10, 90), accounts, f"each of the {accounts} accounts' {each} redemptions redeemed")
        query = (
            "SELECT accrual_id FROM ledger_entries WHERE entry_kind = 'REDEEMED' AND account_id LIKE $1 UNION ALL"
            " SELECT accrual_id FROM purchases_not_earned WHERE line_kind = 'REDEMPTION_REFUSED' AND account_id LIKE $1"
        )
        lines = Counter(accrual_id for (accrual_id,) in rows_of(database_url, query, f"{prefix}%"))
        assert lines == Counter(f"r:{name}:{key}#0" for name, key in asks)
        assert ask_all() == Counter({201: total})  # answered from the ledger, nothing redeemed again
        assert held().count((10, 90)) == accounts
        assert "Traceback" not in processes.log("worker")
