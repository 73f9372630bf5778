"""The balance API against a real Postgres: balances, paginated history with explanations,
a 404 with a message for an unknown account (and zero balances for an account whose purchases
earned nothing), points in PTS, each charity's donations counted once, 4xx with a message for bad
requests, readiness. And who may ask: a bearer token for every route but health, readiness and
metrics (401 without a valid one), the route's scope (403), and an account the token acts for (else
the 404 of an unknown account, the same bytes); the signing keys rotate; OpenAPI says all this.

``client`` carries an operations token (any account, every route); ``api`` carries none."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer

from schemas.codec import SCHEMA_DIR, Codec
from stream.api import create_app
from stream.api_common import MAX_BODY_BYTES
from stream.auth import ACCOUNTS_READ, OFFERS_ACTIVATE, OPERATIONS, REDEMPTIONS_WRITE
from stream.core.balances import balances
from stream.core.entries import Entry
from stream.core.holdout import held_out
from stream.core.lifecycle import due_events
from stream.core.rules import decide
from stream.localstack.tokens import SigningKey, write_jwks
from stream.offer_admin import publish_offers
from stream.settings import Settings
from stream.sink import staging_row
from stream.store.journal import write_batch
from stream.store.migrations import migrate
from tests.factories import T0, book, card_event, generated_card_number, offer
from tests.integration.conftest import API_KEY, api_auth_env, api_headers, api_token, fresh_database
from topics.admin import ensure_topics
from topics.catalogue import account_partition, catalogue

pytestmark = pytest.mark.integration


def _entries() -> list[Entry]:
    """Account api-1: five purchases of 100.00, authorised and cleared (10 ledger lines), then a
    declined one (a line that earned nothing)."""
    offers, state, entries = book(), None, []
    for n in range(5):
        for kind in ("AUTHORIZATION", "CLEARING"):
            event = card_event(kind, 10_000, account_id="api-1", transaction_ref=f"api-ref-{n}")
            decision = decide(event, offers, state)
            state = decision.state
            entries.extend(decision.entries)
    declined = card_event("AUTHORIZATION", 10_000, account_id="api-1", transaction_ref="api-declined", response_code="51")
    entries.extend(decide(declined, offers, state).entries)
    # Account api-3 gives 1% of two purchases to a charity; the first one's window has ended.
    charity = book(offer(offer_id="give-1", reward_kind="CHARITY", charity_id="red-cross", rate_bps=100, pending_days=10))
    state = None
    for n, day in enumerate((0, 15)):
        clearing = card_event(
            "CLEARING", 10_000, account_id="api-3", transaction_ref=f"gift-{n}", occurred_at=T0 + timedelta(days=day)
        )
        decision = decide(clearing, charity, state)
        state = decision.state
        entries.extend(decision.entries)
    for event in due_events(state, "api-3", int((T0 + timedelta(days=12)).timestamp() * 1000)):
        entries.extend(decide(event, charity, state).entries)
    return entries + _charity_entries() + _nothing_earned_entries() + _points_entries() + _held_out_entries()


def _at(days: int) -> Any:
    return T0 + timedelta(days=days)


def _run(account_id: str, offers: Any, steps: list[tuple[Any, ...]]) -> list[Entry]:
    """Run one account's purchase ``p-1`` through the engine: (event_type, amount, day) steps, and
    ("TIME", day) for time passing (what falls due by then)."""
    state, entries = None, []
    for step in steps:
        if step[0] == "TIME":
            events = due_events(state, account_id, int(_at(step[1]).timestamp() * 1000))
        else:
            kind, amount, day = step
            after = kind in ("REFUND", "CHARGEBACK", "CHARGEBACK_REVERSAL")
            events = [
                card_event(
                    kind,
                    amount,
                    account_id=account_id,
                    occurred_at=_at(day),
                    transaction_ref=f"{kind.lower()}-1" if after else "p-1",
                    original_transaction_ref="p-1" if after else None,
                    processing_code="REFUND" if kind == "REFUND" else "PURCHASE",
                    **({"currency": "JPY", "billing_currency": "JPY"} if account_id.endswith("-yen") else {}),
                )
            ]
        for event in events:
            decision = decide(event, offers, state)
            state = decision.state
            entries.extend(decision.entries)
    return entries


# Charity food-bank gets 10% of 50.00 (5.00) from each of these accounts' purchase p-1, with a
# 10-day return window: authorised on day 0, cleared on day 1, the window ends on day 11.
FOOD_BANK = book(offer(offer_id="give-10", reward_kind="CHARITY", charity_id="food-bank", rate_bps=1_000, pending_days=10))
AUTH, CLEAR, WINDOW_ENDS = ("AUTHORIZATION", 5_000, 0), ("CLEARING", 5_000, 1), ("TIME", 12)
FOOD_BANK_DONORS = {
    "fb-pending": [AUTH],  # 5.00 pending: promised
    "fb-confirmed": [AUTH, CLEAR],  # 5.00 confirmed inside the window: promised
    "fb-donated": [AUTH, CLEAR, WINDOW_ENDS],  # 5.00 donated (the case: not promised too)
    "fb-refunded-after": [AUTH, CLEAR, WINDOW_ENDS, ("REFUND", 2_000, 20)],  # 2.00 clawed back from DONATED: 3.00 donated
    "fb-refunded-within": [AUTH, CLEAR, ("REFUND", 2_000, 5)],  # 2.00 clawed back from CONFIRMED: 3.00 promised
    "fb-charged-back": [AUTH, CLEAR, ("CHARGEBACK", 5_000, 5)],  # all 5.00 clawed back: no donor
    "fb-yen": [AUTH],  # 500 JPY pending: another currency, another line
}


def _charity_entries() -> list[Entry]:
    return [e for account, steps in FOOD_BANK_DONORS.items() for e in _run(account, FOOD_BANK, steps)]


def _nothing_earned_entries() -> list[Entry]:
    """Account api-4: a declined purchase and one at an MCC no offer covers; nothing earned."""
    return [
        entry
        for event in (
            card_event("AUTHORIZATION", 10_000, account_id="api-4", transaction_ref="n-1", response_code="51"),
            card_event("AUTHORIZATION", 10_000, account_id="api-4", transaction_ref="n-2", mcc="5999"),
        )
        for entry in decide(event, book(), None).entries
    ]


def _points_entries() -> list[Entry]:
    """Account api-5: 2 points per EUR of 10.75 EUR, authorised and cleared: 21 points confirmed."""
    points = book(offer(offer_id="books-2pts", reward_kind="POINTS", rate_bps=None, points_per_unit=2, currency="EUR"))
    return _run("api-5", points, [("AUTHORIZATION", 1_075, 0), ("CLEARING", 1_075, 1)])


# The live offer: grocery-5 holding out 40% of the accounts (stream.core.holdout). api-held's bucket
# for it is 170 and api-2's 3361, both below 4000: held out.
LIVE_OFFER = offer(holdout_bps=4_000)


def _held_out_entries() -> list[Entry]:
    """Account api-held: a purchase of 100.00 authorised and cleared, held out of grocery-5."""
    assert held_out("api-held", LIVE_OFFER)
    return _run("api-held", book(LIVE_OFFER), [("AUTHORIZATION", 10_000, 0), ("CLEARING", 10_000, 1)])


CONFLICTING: dict[str, Any] = {}  # the entry the database fixture sends again with another amount


@pytest.fixture(scope="module")
def database(postgres_url: str) -> str:
    database = fresh_database(postgres_url)
    codec = Codec()

    async def prepare() -> None:
        connection = await asyncpg.connect(database)
        try:
            await migrate(connection)
            rows, entries = [], _entries()
            for position, entry in enumerate(entries):
                raw = codec.encode("accrual", entry.record())
                rows.append(staging_row(position, codec.decode(raw)[1], raw))
            await write_batch(connection, rows)
            # an entry arriving again under a held id with another amount: a conflict, for the operations view
            held = next(e for e in entries if e.entry_kind == "PENDING_CREATED")
            CONFLICTING.update(held.record(), amount_minor=held.amount_minor + 1)
            raw = codec.encode("accrual", CONFLICTING)
            await write_batch(connection, [staging_row(0, codec.decode(raw)[1], raw)])
        finally:
            await connection.close()

    asyncio.run(prepare())
    return database


@pytest.fixture(scope="module")
def jwks_dir(work_dir: Path) -> Path:
    path = work_dir / f"api-auth-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def settings(database: str, kafka_bootstrap: str, jwks_dir: Path) -> Settings:
    """Fresh topics with one live offer, the fresh database, and tokens signed by the session's key."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": database,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "TOPIC_PREFIX": f"api-{uuid.uuid4().hex[:6]}.",
            **api_auth_env(jwks_dir),
        }
    )
    topics = catalogue(settings.topic_prefix, settings.topic_partitions)
    asyncio.run(ensure_topics(kafka_bootstrap, topics))
    asyncio.run(publish_offers(settings, Codec(), topics.offers.name, [LIVE_OFFER]))
    return settings


@pytest_asyncio.fixture()
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API, asked without a token unless a request brings one."""
    app = create_app(settings, Codec(), settings.topics())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
            yield http


@pytest.fixture()
def client(api: httpx.AsyncClient) -> httpx.AsyncClient:
    """The API as operations ask it: every request carries an operations token unless it brings another."""
    api.headers.update(api_headers([OPERATIONS]))
    return api


@pytest.mark.asyncio
async def test_balances_of_an_account(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/accounts/api-1/balances")).json()
    assert body == {
        "account_id": "api-1",
        "balances": [
            {
                "reward_kind": "CASH",
                "currency": "EUR",
                "pending_minor": 0,
                "confirmed_minor": 2_500,
                "available_minor": 0,
                "lifetime_earned_minor": 2_500,
                "clawed_back_minor": 0,
                "donated_minor": 0,
                "held_minor": 0,
                "paid_out_minor": 0,
                "redeemed_minor": 0,
                "available": "0.00 EUR",
            }
        ],
    }


@pytest.mark.asyncio
async def test_history_pages_newest_first_with_explanations(client: httpx.AsyncClient) -> None:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/accounts/api-1/history", params=params)).json()
        seen += [line["accrual_id"] for line in page["entries"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 11
    newest, earned = (await client.get("/v1/accounts/api-1/history", params={"limit": 2})).json()["entries"]
    assert (newest["entry_kind"], newest["amount_minor"], newest["explanation"]["reason"]) == ("NOT_EARNED", 0, "declined")
    assert newest["explanation"]["basis_minor"] == 10_000 and newest["transaction_ref"] == "api-declined"
    assert earned["entry_kind"] == "CONFIRMED"
    assert earned["explanation"]["detail"] == "confirmed: 5.00% of 100.00 EUR = 5.00 EUR (rounded down)"
    assert earned["explanation"]["rate_bps"] == 500 and earned["offer_id"] == "grocery-5"


@pytest.mark.asyncio
async def test_unknown_account_is_404_with_a_message(client: httpx.AsyncClient) -> None:
    for path in ("/v1/accounts/nobody/balances", "/v1/accounts/nobody/history"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json() == {"detail": "account nobody has no cashback"}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/accounts/bad%20id!/balances", 422),
        ("/v1/accounts/api-1/history?limit=0", 422),
        ("/v1/accounts/api-1/history?limit=100000", 422),
        ("/v1/accounts/api-1/history?cursor=not-a-cursor", 400),
        # cursors that decode to numbers a bigint cannot hold, or no sequence has
        (f"/v1/accounts/api-1/history?cursor={base64.urlsafe_b64encode(str(2**63).encode()).decode()}", 400),
        (f"/v1/accounts/api-1/history?cursor={base64.urlsafe_b64encode(str(-(2**63)).encode()).decode()}", 400),
        (f"/v1/accounts/api-1/history?cursor={base64.urlsafe_b64encode(str(10**40).encode()).decode()}", 400),
        ("/v1/operations/ledger-conflicts?cursor=not-a-cursor", 400),
        ("/v1/operations/ledger-conflicts?limit=0", 422),
    ],
)
@pytest.mark.asyncio
async def test_bad_requests_are_4xx_with_a_message(client: httpx.AsyncClient, path: str, status: int) -> None:
    response = await client.get(path)
    assert response.status_code == status
    assert response.json()["detail"]


@pytest.mark.asyncio
async def test_health_readiness_openapi_and_metrics_need_no_token(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    await _wait_ready(api)
    assert (await api.get("/readyz")).json() == {"status": "ready"}
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert {"/v1/accounts/{account_id}/balances", "/v1/accounts/{account_id}/history"} <= set(paths)
    assert (await api.get("/docs")).status_code == 200
    await api.get("/v1/accounts/api-1/balances", headers=api_headers([ACCOUNTS_READ], ["api-1"]))
    assert 'cashback_api_requests_total{route="/v1/accounts/{account_id}/balances"' in (await api.get("/metrics")).text


async def _wait_ready(client: httpx.AsyncClient) -> None:
    for _ in range(100):
        if (await client.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError((await client.get("/readyz")).json())


@pytest.mark.asyncio
async def test_live_offers_are_listed(client: httpx.AsyncClient) -> None:
    await _wait_ready(client)
    offers = (await client.get("/v1/offers")).json()
    assert [(o["offer_id"], o["rate_bps"], o["reward_kind"], o["holdout_bps"]) for o in offers] == [
        ("grocery-5", 500, "CASH", 4_000)
    ]


@pytest.mark.asyncio
async def test_activation_is_published_on_the_accounts_partition(client: httpx.AsyncClient, settings: Settings) -> None:
    await _wait_ready(client)
    response = await client.put(
        "/v1/accounts/api-2/offers/grocery-5/activation", headers=api_headers([OFFERS_ACTIVATE], ["api-2"])
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["account_id"], body["offer_id"], body["active"]) == ("api-2", "grocery-5", True)
    assert body["held_out"] is True and held_out("api-2", LIVE_OFFER)  # activated, and still held out: told so

    topic = catalogue(settings.topic_prefix).activations.name
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=5_000)
    finally:
        await consumer.stop()
    (records,) = batch.values()
    (record,) = records
    assert record.key == b"api-2:grocery-5"
    assert record.partition == account_partition("api-2", settings.topic_partitions)
    _, activation = Codec().decode(record.value, expected_subject="offer_activation")
    assert (activation["account_id"], activation["offer_id"], activation["active"]) == ("api-2", "grocery-5", True)


@pytest.mark.asyncio
async def test_activating_an_unknown_offer_is_404(client: httpx.AsyncClient) -> None:
    await _wait_ready(client)
    response = await client.put(
        "/v1/accounts/api-2/offers/no-such-offer/activation", headers=api_headers([OFFERS_ACTIVATE], ["api-2"])
    )
    assert response.status_code == 404 and response.json() == {"detail": "offer no-such-offer does not exist"}


@pytest.mark.asyncio
async def test_a_charity_sees_what_was_donated_and_promised(client: httpx.AsyncClient) -> None:
    donations = (await client.get("/v1/charities/red-cross/donations")).json()
    assert donations == [
        {
            "charity_id": "red-cross",
            "currency": "EUR",
            "donated_minor": 100,
            "promised_minor": 100,
            "clawed_back_minor": 0,
            "donors": 1,
        }
    ]
    (line,) = (await client.get("/v1/accounts/api-3/balances")).json()["balances"]
    assert (line["reward_kind"], line["donated_minor"], line["confirmed_minor"], line["available_minor"]) == (
        "CHARITY",
        100,
        100,
        0,
    )
    missing = await client.get("/v1/charities/nobody/donations")
    assert missing.status_code == 404 and missing.json() == {"detail": "nothing donated to charity nobody"}


@pytest.mark.asyncio
async def test_each_charity_amount_counts_once(client: httpx.AsyncClient) -> None:
    """Pending, confirmed, donated and clawed-back charity rewards: a reward is promised until its
    window ends, then donated, never both; what a refund or chargeback took back is in neither."""
    donations = (await client.get("/v1/charities/food-bank/donations")).json()
    assert donations == [
        # donated 5.00 + 3.00; promised 5.00 pending + 5.00 confirmed + 3.00; clawed back 2.00 + 2.00 + 5.00
        {
            "charity_id": "food-bank",
            "currency": "EUR",
            "donated_minor": 800,
            "promised_minor": 1_300,
            "clawed_back_minor": 900,
            "donors": 5,
        },
        {
            "charity_id": "food-bank",
            "currency": "JPY",
            "donated_minor": 0,
            "promised_minor": 500,
            "clawed_back_minor": 0,
            "donors": 1,
        },
    ]
    # The same figures as the customers' balances (the engine's oracle and the API's /balances).
    oracle = balances(_charity_entries())
    for line in donations:
        rows = [totals for (_, _, unit), totals in oracle.items() if unit == line["currency"]]
        assert line["donated_minor"] == sum(t["donated_minor"] for t in rows)
        assert line["promised_minor"] == sum(t["pending_minor"] + t["confirmed_minor"] for t in rows)
        assert line["clawed_back_minor"] == sum(t["clawed_back_minor"] for t in rows)
    (donated,) = (await client.get("/v1/accounts/fb-donated/balances")).json()["balances"]
    assert (donated["donated_minor"], donated["pending_minor"], donated["confirmed_minor"]) == (500, 0, 0)


@pytest.mark.asyncio
async def test_a_held_out_account_sees_why_it_earned_nothing(client: httpx.AsyncClient) -> None:
    lines = (await client.get("/v1/accounts/api-held/history")).json()["entries"]
    assert [(line["entry_kind"], line["explanation"]["reason"]) for line in lines] == [("NOT_EARNED", "holdout")] * 2
    authorisation = lines[-1]["explanation"]  # oldest last
    assert authorisation["detail"].startswith("authorisation earns nothing from grocery-5: holdout (")
    assert "bucket 170 < holdout_bps 4000 of 10000" in authorisation["detail"]
    assert (await client.get("/v1/accounts/api-held/balances")).json() == {"account_id": "api-held", "balances": []}


@pytest.mark.asyncio
async def test_an_account_whose_purchases_earned_nothing_has_zero_balances(client: httpx.AsyncClient) -> None:
    history = await client.get("/v1/accounts/api-4/history")
    assert history.status_code == 200
    assert {line["entry_kind"] for line in history.json()["entries"]} == {"NOT_EARNED"}
    response = await client.get("/v1/accounts/api-4/balances")
    assert response.status_code == 200
    assert response.json() == {"account_id": "api-4", "balances": []}


@pytest.mark.asyncio
async def test_points_are_pts_in_the_api_the_schema_and_the_readme(client: httpx.AsyncClient) -> None:
    (line,) = (await client.get("/v1/accounts/api-5/balances")).json()["balances"]
    assert (line["reward_kind"], line["currency"], line["confirmed_minor"]) == ("POINTS", "PTS", 21)
    history = (await client.get("/v1/accounts/api-5/history")).json()["entries"]
    assert {(h["reward_kind"], h["currency"]) for h in history} == {("POINTS", "PTS")}
    # The three say the same: the OpenAPI description, the accrual schema's doc, the README.
    described = (await client.get("/openapi.json")).json()["components"]["schemas"]["Balance"]["properties"]["currency"]
    schema = json.loads((SCHEMA_DIR / "accrual.v2.avsc").read_text())
    (currency,) = [field for field in schema["fields"] if field["name"] == "currency"]
    assert described["description"] == currency["doc"]
    assert "PTS (whole points, not a currency) for POINTS" in currency["doc"]
    assert "purchase's currency" not in currency["doc"] + described["description"]
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    assert "and `PTS` (whole points, not a currency) for points, in the API as in the accrual schema" in readme


@pytest.mark.asyncio
async def test_operators_see_each_ledger_conflict(client: httpx.AsyncClient) -> None:
    held = CONFLICTING
    response = await client.get("/v1/operations/ledger-conflicts", params={"limit": 1})
    assert response.status_code == 200
    body = response.json()
    (conflict,) = body["conflicts"]
    assert (conflict["account_id"], conflict["accrual_id"], conflict["held_kind"], conflict["arrived_amount_minor"]) == (
        held["account_id"],
        held["accrual_id"],
        "PENDING_CREATED",
        held["amount_minor"],
    )
    assert body["next_cursor"] is None


# --- who may ask -----------------------------------------------------------------------------------

PROTECTED = [
    ("GET", "/v1/accounts/api-1/balances"),
    ("GET", "/v1/accounts/api-1/history"),
    ("GET", "/v1/offers"),
    ("GET", "/v1/charities/red-cross/donations"),
    ("GET", "/v1/operations/ledger-conflicts"),
    ("PUT", "/v1/accounts/api-2/offers/grocery-5/activation"),
    ("DELETE", "/v1/accounts/api-2/offers/grocery-5/activation"),
]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.asyncio
async def test_no_token_is_401_with_a_bearer_challenge(api: httpx.AsyncClient, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwdw=="}):
        response = await api.request(method, path, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {"detail": "missing bearer token (Authorization: Bearer <token>)"}


# Each token is made when its test runs (a token made at collection could expire before it is used).
INVALID_TOKENS: dict[str, tuple[Callable[[], str], str]] = {
    "garbage": (lambda: "garbage", "malformed token"),
    "empty": (lambda: "", "malformed token"),
    "expired": (lambda: api_token([ACCOUNTS_READ], ["api-1"], now=time.time() - 3600), "token expired"),
    "audience": (lambda: api_token([ACCOUNTS_READ], ["api-1"], audience="another-api"), "token is for another audience (aud)"),
    "issuer": (
        lambda: api_token([ACCOUNTS_READ], ["api-1"], issuer="https://evil.example.test"),
        "token is from another issuer (iss)",
    ),
    "unknown-key": (
        lambda: api_token([ACCOUNTS_READ], ["api-1"], key=SigningKey.generate("ES256")),
        "token signed by an unknown key",
    ),
    "forged-signature": (  # another key under the trusted key's kid
        lambda: api_token([ACCOUNTS_READ], ["api-1"], key=SigningKey.generate("ES256", kid=API_KEY.kid)),
        "token signature does not verify",
    ),
}


@pytest.mark.parametrize("case", INVALID_TOKENS)
@pytest.mark.asyncio
async def test_an_invalid_token_is_401_invalid_token(api: httpx.AsyncClient, case: str) -> None:
    make, reason = INVALID_TOKENS[case]
    response = await api.get("/v1/accounts/api-1/balances", headers=_bearer(make()))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == f'Bearer error="invalid_token", error_description="{reason}"'
    assert response.json() == {"detail": reason}


@pytest.mark.asyncio
async def test_a_customer_token_reads_its_own_account(api: httpx.AsyncClient) -> None:
    headers = api_headers([ACCOUNTS_READ], ["api-1", "api-4"])
    balances = await api.get("/v1/accounts/api-1/balances", headers=headers)
    assert balances.status_code == 200 and balances.json()["account_id"] == "api-1"
    history = await api.get("/v1/accounts/api-4/history", headers=headers)
    assert history.status_code == 200 and history.json()["entries"]


@pytest.mark.parametrize("route", ["balances", "history"])
@pytest.mark.asyncio
async def test_another_customers_account_is_the_404_of_an_unknown_account(api: httpx.AsyncClient, route: str) -> None:
    """api-1 exists; api-9 does not. A token for api-3 and api-9 cannot tell one from the other."""
    headers = api_headers([ACCOUNTS_READ], ["api-3", "api-9"])
    foreign = await api.get(f"/v1/accounts/api-1/{route}", headers=headers)
    unknown = await api.get(f"/v1/accounts/api-9/{route}", headers=headers)
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.content == unknown.content.replace(b"api-9", b"api-1") == b'{"detail":"account api-1 has no cashback"}'
    assert foreign.headers == unknown.headers
    # and an operations token sees api-1, and the same 404 for api-9
    assert (await api.get(f"/v1/accounts/api-1/{route}", headers=api_headers([OPERATIONS]))).status_code == 200
    ops_unknown = await api.get(f"/v1/accounts/api-9/{route}", headers=api_headers([OPERATIONS]))
    assert (ops_unknown.content, ops_unknown.headers) == (unknown.content, unknown.headers)


@pytest.mark.asyncio
async def test_a_token_without_the_routes_scope_is_403(api: httpx.AsyncClient) -> None:
    activator = api_headers([OFFERS_ACTIVATE], ["api-1"])
    response = await api.get("/v1/accounts/api-1/balances", headers=activator)
    assert response.status_code == 403
    assert response.json() == {"detail": "the token has none of the scopes cashback:accounts.read, cashback:operations"}
    assert (
        response.headers["www-authenticate"]
        == 'Bearer error="insufficient_scope", scope="cashback:accounts.read cashback:operations"'
    )
    # a customer's token never reaches the operations views, for any account it holds
    customer = api_headers([ACCOUNTS_READ, OFFERS_ACTIVATE], ["api-1", "api-3"])
    for path in ("/v1/operations/ledger-conflicts", "/v1/charities/red-cross/donations"):
        refused = await api.get(path, headers=customer)
        assert refused.status_code == 403
        assert refused.json() == {"detail": "the token has none of the scopes cashback:operations"}


@pytest.mark.asyncio
async def test_operations_read_any_account_and_the_operations_routes(api: httpx.AsyncClient) -> None:
    operator = api_headers([OPERATIONS])  # no accounts claim at all
    for path in ("/v1/accounts/api-1/balances", "/v1/accounts/api-5/history", "/v1/operations/ledger-conflicts"):
        assert (await api.get(path, headers=operator)).status_code == 200, path
    assert (await api.get("/v1/charities/red-cross/donations", headers=operator)).status_code == 200


@pytest.mark.asyncio
async def test_activation_needs_the_offers_scope_and_the_account(api: httpx.AsyncClient) -> None:
    await _wait_ready(api)
    path = "/v1/accounts/api-2/offers/grocery-5/activation"
    reader = await api.put(path, headers=api_headers([ACCOUNTS_READ], ["api-2"]))
    assert reader.status_code == 403
    assert reader.json() == {"detail": "the token has none of the scopes cashback:offers.activate"}
    operator = await api.delete(path, headers=api_headers([OPERATIONS]))
    assert operator.status_code == 403  # operations read; they never act for a customer
    foreign = await api.put(path, headers=api_headers([OFFERS_ACTIVATE], ["api-3"]))
    assert foreign.status_code == 404 and foreign.json() == {"detail": "account api-2 has no cashback"}
    own = await api.delete(path, headers=api_headers([OFFERS_ACTIVATE], ["api-2"]))
    assert own.status_code == 200 and own.json()["active"] is False


@pytest.mark.asyncio
async def test_the_live_offers_need_a_valid_token_and_no_scope(api: httpx.AsyncClient) -> None:
    await _wait_ready(api)
    assert (await api.get("/v1/offers")).status_code == 401
    response = await api.get("/v1/offers", headers=api_headers([], None))
    assert response.status_code == 200 and [o["offer_id"] for o in response.json()] == ["grocery-5"]


@pytest.mark.asyncio
async def test_a_rotated_signing_key_is_accepted_at_its_first_token(api: httpx.AsyncClient, jwks_dir: Path) -> None:
    """The API loaded the JWKS at its start; the issuer then publishes its next key (another algorithm
    too): the first token signed with it makes the API fetch the JWKS again."""
    new = SigningKey.generate("RS256")
    write_jwks(jwks_dir / "jwks.json", [API_KEY, new])
    try:
        response = await api.get("/v1/accounts/api-1/balances", headers=api_headers([ACCOUNTS_READ], ["api-1"], key=new))
        assert response.status_code == 200, response.json()
        assert (await api.get("/v1/accounts/api-1/balances", headers=api_headers([ACCOUNTS_READ], ["api-1"]))).status_code == 200
    finally:
        write_jwks(jwks_dir / "jwks.json", [API_KEY])


@pytest.mark.asyncio
async def test_a_body_over_the_bound_is_413_and_never_read_whole(api: httpx.AsyncClient) -> None:
    """FastAPI reads a body before it checks the token: without a bound, a caller with no token made
    the API hold whatever it sent. Declared too large, it is refused unread; sent in chunks with no
    length, as soon as what arrived passes the bound."""
    path = "/v1/operations/accounts/api-1/erasure"
    too_large = {"detail": f"the request body is larger than {MAX_BODY_BYTES} bytes"}
    declared = await api.post(path, content=b"{" + b" " * MAX_BODY_BYTES + b"}", headers={"content-type": "application/json"})
    assert (declared.status_code, declared.json()) == (413, too_large)

    sent = 0

    async def chunks() -> AsyncIterator[bytes]:  # 16 MiB in 16 KiB chunks, no Content-Length
        nonlocal sent
        for _ in range(1024):
            sent += 1
            yield b" " * 16384

    chunked = await api.post(path, content=chunks(), headers={"content-type": "application/json"})
    assert (chunked.status_code, chunked.json()) == (413, too_large)
    assert sent <= MAX_BODY_BYTES // 16384 + 2, f"{sent} chunks read: the body was read past its bound"

    # a body within the bound reaches the route: an erasure whose reason is a character too long for it
    fits = await api.post(path, json={"reason": "x" * 501}, headers=api_headers([OPERATIONS]))
    assert fits.status_code == 422 and "500 characters" in fits.text


@pytest.mark.asyncio
async def test_an_erasure_reason_with_a_control_character_or_a_card_number_is_refused(client: httpx.AsyncClient) -> None:
    """The erasure log keeps its reason for good: refused before anything is published."""
    path = "/v1/operations/accounts/api-1/erasure"
    assert (await client.post(path, json={"reason": "DSR-1\x00"})).status_code == 422
    refused = await client.post(path, json={"reason": f"card {generated_card_number()}"})
    assert refused.status_code == 400 and "looks like a card number" in refused.json()["detail"]


@pytest.mark.asyncio
async def test_a_refused_token_is_not_logged(api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    tokens = [api_token([ACCOUNTS_READ], ["api-1"], now=time.time() - 3600), api_token(key=SigningKey.generate("ES256")) + "x"]
    with caplog.at_level(logging.DEBUG):
        for token in tokens:
            assert (await api.get("/v1/accounts/api-1/balances", headers=_bearer(token))).status_code == 401
    assert "bearer token refused" in caplog.text  # the reason is logged (at DEBUG)
    for token in tokens:
        for part in token.split("."):
            assert part not in caplog.text


@pytest.mark.asyncio
async def test_openapi_declares_the_bearer_scheme_on_every_protected_route(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": document["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    expected = {
        ("get", "/v1/accounts/{account_id}/balances"): [[ACCOUNTS_READ], [OPERATIONS]],
        ("get", "/v1/accounts/{account_id}/history"): [[ACCOUNTS_READ], [OPERATIONS]],
        ("put", "/v1/accounts/{account_id}/offers/{offer_id}/activation"): [[OFFERS_ACTIVATE]],
        ("delete", "/v1/accounts/{account_id}/offers/{offer_id}/activation"): [[OFFERS_ACTIVATE]],
        ("get", "/v1/charities/{charity_id}/donations"): [[OPERATIONS]],
        ("get", "/v1/charities/{charity_id}/remittances"): [[OPERATIONS]],
        ("get", "/v1/operations/payouts"): [[OPERATIONS]],
        ("get", "/v1/operations/ledger-conflicts"): [[OPERATIONS]],
        ("get", "/v1/operations/holds"): [[OPERATIONS]],
        ("post", "/v1/operations/holds/release"): [[OPERATIONS]],
        ("post", "/v1/operations/holds/forfeit"): [[OPERATIONS]],
        ("get", "/v1/operations/merchant-flags"): [[OPERATIONS]],
        ("get", "/v1/operations/reconciliation/{kind}"): [[OPERATIONS]],
        ("get", "/v1/operations/offers/{offer_id}/results"): [[OPERATIONS]],
        ("get", "/v1/operations/sponsors/{sponsor_id}/statements/{month}"): [[OPERATIONS]],
        ("get", "/v1/operations/sponsors/{sponsor_id}/statements/{month}/entries"): [[OPERATIONS]],
        ("get", "/v1/operations/accounts/{account_id}/export"): [[OPERATIONS]],
        ("post", "/v1/operations/accounts/{account_id}/erasure"): [[OPERATIONS]],
        ("get", "/v1/offers"): [[]],
        ("post", "/v1/accounts/{account_id}/redemptions"): [[REDEMPTIONS_WRITE]],
        ("get", "/v1/accounts/{account_id}/redemptions/{idempotency_key}"): [[REDEMPTIONS_WRITE], [ACCOUNTS_READ], [OPERATIONS]],
    }
    operations = {(method, path): op for path, item in document["paths"].items() for method, op in item.items()}
    assert set(operations) == set(expected) | {("get", "/healthz"), ("get", "/readyz")}
    for key, scopes in expected.items():
        operation = operations[key]
        assert operation["security"] == [{"bearerAuth": alternative} for alternative in scopes], key
        assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
        assert ("403" in operation["responses"]) == (scopes != [[]]), key
    for key in (("get", "/v1/accounts/{account_id}/balances"), ("put", "/v1/accounts/{account_id}/offers/{offer_id}/activation")):
        assert "the token does not act for" in operations[key]["responses"]["404"]["description"]
    for open_route in (("get", "/healthz"), ("get", "/readyz")):
        assert "security" not in operations[open_route]
        assert "401" not in operations[open_route]["responses"]
