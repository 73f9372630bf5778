"""Offer results against a real Postgres and Kafka (migration 0013, ``stream.store.offer_results``,
``stream.offer_results``, ``GET /v1/operations/offers/{offer_id}/results``): the holdout lines written by the sink's
own batch write carry their offer, the older ones are backfilled from their detail, each figure on a known ledger
(whole life and a period), the gauges and their label set, the route's answers and refusals, the activations read
from their compacted topic, and an erasure that changes none of the figures.

The worker is played by the pure engine (the back-test's fold, as the matcher would decide), its entries encoded
and staged as the sink stages them."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from schemas.codec import Codec
from stream.account_messages import activation_message
from stream.api import create_app
from stream.auth import ACCOUNTS_READ, OPERATIONS
from stream.backtest import Replay
from stream.core.entries import Entry
from stream.core.holdout import held_out
from stream.offer_admin import publish_offers
from stream.offer_results import OfferResultsGauges
from stream.producing import send_once
from stream.settings import Settings
from stream.sink import appending_ids, staging_row
from stream.store import offer_results as store
from stream.store.journal import write_batch
from stream.store.migrations import MIGRATIONS_DIR, migrate
from tests.factories import book, card_event, offer
from tests.integration.conftest import api_auth_env, api_headers, fresh_database
from topics.admin import ensure_topics

pytestmark = pytest.mark.integration

CODEC = Codec()
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
GROCER = offer(offer_id="grocer-8", name="8% at the grocer", rate_bps=800, mccs=["5411"], holdout_bps=3000)
EVERYDAY = offer(offer_id="everyday-1", name="1% at the grocer", rate_bps=100)
OFFERS = book(GROCER, EVERYDAY)
_CANDIDATES = [f"res-{n:03d}" for n in range(60)]
T1, T2 = [a for a in _CANDIDATES if not held_out(a, GROCER)][:2]  # the treated group's
H1, H2 = [a for a in _CANDIDATES if held_out(a, GROCER)][:2]  # held out of grocer-8: everyday-1 pays them


def _replay() -> Replay:
    """T1: 100.00 cleared, 50.00 cleared then 20.00 refunded on day 7, 20.00 at a pharmacy (not grocer-8's);
    T2: 30.00 authorised only, 5000 JPY cleared. H1: 80.00 cleared, 40.00 on day 10; H2: 70.00."""
    replay = Replay(OFFERS)

    def buy(account: str, ref: str, amount: int, day: float = 0, clear: bool = True, **fields: Any) -> None:
        at = T0 + timedelta(days=day)
        replay.decide(card_event("AUTHORIZATION", amount, account_id=account, transaction_ref=ref, occurred_at=at, **fields))
        if clear:
            at += timedelta(hours=1)
            replay.decide(card_event("CLEARING", amount, account_id=account, transaction_ref=ref, occurred_at=at, **fields))

    buy(T1, "a", 10_000)
    buy(T1, "b", 5_000)
    buy(T1, "pharmacy", 2_000, mcc="5912")
    replay.decide(
        card_event(
            "REFUND",
            2_000,
            account_id=T1,
            transaction_ref="b-r",
            original_transaction_ref="b",
            processing_code="REFUND",
            occurred_at=T0 + timedelta(days=7),
        )
    )
    buy(T2, "c", 3_000, clear=False)
    buy(T2, "yen", 5_000, billing_currency="JPY", currency="JPY")
    buy(H1, "d", 8_000)
    buy(H1, "e", 4_000, day=10)
    buy(H2, "f", 7_000, clear=False)
    return replay


def _rows(entries: list[Entry]) -> list[tuple[Any, ...]]:
    rows = []
    for position, entry in enumerate(entries):
        raw = CODEC.encode("accrual", entry.record())
        rows.append(staging_row(position, CODEC.decode(raw)[1], raw, appending_ids(CODEC)))
    return rows


# Lines as an older sink wrote them (no offer column): a holdout line at the judgement, the line of its clearing, and
# a refusal of another reason.
_LEGACY = [
    (
        "old-auth#0",
        "authorisation earns nothing from grocer-8: holdout (the account is in the offer's holdout group, "
        "kept to measure the spending it adds: bucket 719 < holdout_bps 3000 of 10000)",
    ),
    (
        "old-clearing#0",
        "clearing earns nothing: decided at the purchase (authorisation earns nothing from grocer-8: holdout "
        "(the account is in the offer's holdout group, kept to measure the spending it adds: bucket 719 < holdout_bps 3000 of 10000))",
    ),
    ("old-small#0", "authorisation earns nothing: below_min_spend (grocer-8 needs 20.00 EUR)"),
]


async def _with_legacy_lines(database: str, work_dir: Path) -> None:
    """The migrations up to 0012, the legacy lines, then 0013 (the backfill)."""
    before = work_dir / f"migrations-{uuid.uuid4().hex[:6]}"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < "0013":
            shutil.copy(path, before / path.name)
    connection = await asyncpg.connect(database)
    try:
        await migrate(connection, before)
        for accrual_id, detail in _LEGACY:
            reason = "below_min_spend" if "below_min_spend" in detail else "holdout"
            await connection.execute(
                "INSERT INTO purchases_not_earned (accrual_id, source_event_id, account_id, transaction_ref, reason, detail,"
                " basis_minor, basis_currency, occurred_at) VALUES ($1, $2, 'legacy-1', $3, $4, $5, 6000, 'EUR', $6)",
                accrual_id,
                accrual_id.split("#")[0],
                "old-small" if "small" in accrual_id else "old",
                reason,
                detail,
                T0 - timedelta(days=30),
            )
        assert (await migrate(connection))[:1] == ["0013_not_earned_offer.sql"]  # then the later ones (0015...)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def database(postgres_url: str, work_dir: Path) -> str:
    database = fresh_database(postgres_url)
    asyncio.run(_with_legacy_lines(database, work_dir))

    async def write() -> None:
        connection = await asyncpg.connect(database)
        try:
            await write_batch(connection, _rows(list(_replay().entries.values())))
        finally:
            await connection.close()

    asyncio.run(write())
    return database


@pytest_asyncio.fixture()
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.mark.asyncio
async def test_the_sink_writes_each_holdout_line_with_its_offer_and_the_older_ones_are_backfilled(
    db: asyncpg.Connection,
) -> None:
    rows = await db.fetch("SELECT account_id, transaction_ref, reason, offer_id FROM purchases_not_earned ORDER BY history_seq")
    named = {(r["account_id"], r["transaction_ref"]): r["offer_id"] for r in rows if r["reason"] == "holdout"}
    assert {k: v for k, v in named.items() if k[0] != "legacy-1"} == {
        (H1, "d"): "grocer-8",
        (H1, "e"): "grocer-8",
        (H2, "f"): "grocer-8",
    }
    legacy = {r["transaction_ref"]: r["offer_id"] for r in rows if r["account_id"] == "legacy-1"}
    clearing = await db.fetchval("SELECT offer_id FROM purchases_not_earned WHERE accrual_id = 'old-clearing#0'")
    assert legacy["old-small"] is None and clearing is None  # the clearing's line names no offer, as a new one
    assert await db.fetchval("SELECT offer_id FROM purchases_not_earned WHERE accrual_id = 'old-auth#0'") == "grocer-8"
    with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):  # the append-only guards are back on
        await db.execute("UPDATE purchases_not_earned SET offer_id = 'other' WHERE accrual_id = 'old-small#0'")


@pytest.mark.asyncio
async def test_the_figures_of_a_known_ledger_over_the_offers_whole_life(db: asyncpg.Connection) -> None:
    found = (await store.figures(db, ["grocer-8"], None, None))["grocer-8"]
    # legacy-1's backfilled line counts too: 60.00 EUR held out, a month before
    assert (found.eligible_accounts, found.accounts) == (5, {"treated": 2, "holdout": 3})
    assert found.group("EUR", "treated") == store.Purchases(accounts=2, purchases=3, spend_minor=18_000)  # a, b, c
    assert found.group("JPY", "treated") == store.Purchases(accounts=1, purchases=1, spend_minor=5_000)
    assert found.group("EUR", "holdout") == store.Purchases(accounts=3, purchases=4, spend_minor=25_000)  # d e f, old
    assert found.group("JPY", "holdout") == store.Purchases()
    costs = {(c.reward_kind, c.unit): c for c in found.costs}
    eur = costs[("CASH", "EUR")]
    # booked: 8.00 + 4.00 + 2.40 pending; returned: 1.60 clawed back (20.00 of 50.00 refunded)
    assert (eur.booked_minor, eur.returned_minor, eur.cost_minor, eur.pending_minor, eur.clawed_back_minor) == (
        1_440,
        160,
        1_280,
        240,
        160,
    )
    assert costs[("CASH", "JPY")].cost_minor == 400 and set(costs) == {("CASH", "EUR"), ("CASH", "JPY")}
    # everyday-1 (at the grocer too) paid the held-out accounts: its treated group, no holdout; the pharmacy is no one's
    everyday = (await store.figures(db, ["everyday-1"], None, None))["everyday-1"]
    assert everyday.group("EUR", "treated") == store.Purchases(accounts=2, purchases=3, spend_minor=19_000)
    assert everyday.accounts["holdout"] == 0


@pytest.mark.asyncio
async def test_a_period_is_half_open_by_event_time(db: asyncpg.Connection) -> None:
    late = (await store.figures(db, ["grocer-8"], T0 + timedelta(days=5), None))["grocer-8"]
    assert late.group("EUR", "holdout") == store.Purchases(accounts=1, purchases=1, spend_minor=4_000)  # H1's day 10
    assert late.group("EUR", "treated") == store.Purchases()  # no purchase; the refund's clawback is a cost line
    assert [(c.unit, c.booked_minor, c.returned_minor, c.cost_minor) for c in late.costs] == [("EUR", 0, 160, -160)]
    early = (await store.figures(db, ["grocer-8"], T0, T0 + timedelta(days=10)))["grocer-8"]
    assert early.group("EUR", "holdout") == store.Purchases(accounts=2, purchases=2, spend_minor=15_000)  # day 10 excluded
    assert early.eligible_accounts == 4


@pytest.mark.asyncio
async def test_the_gauges_follow_the_live_offers(database: str) -> None:
    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
    try:
        await OfferResultsGauges(pool, lambda: OFFERS, None, 60).observe()
        assert sample("cashback_offer_accounts", offer_id="grocer-8", group="holdout") == 3
        assert sample("cashback_offer_eligible_accounts", offer_id="grocer-8") == 5
        assert sample("cashback_offer_purchases", offer_id="grocer-8", group="treated", currency="JPY") == 1
        assert sample("cashback_offer_purchases", offer_id="grocer-8", group="holdout", currency="JPY") == 0
        assert sample("cashback_offer_spend_minor", offer_id="grocer-8", group="holdout", currency="EUR") == 25_000
        assert sample("cashback_offer_cost_minor", offer_id="grocer-8", unit="EUR") == 1_280
        assert sample("cashback_offer_activations", offer_id="grocer-8", group="treated") is None  # no mirror
        assert abs((sample("cashback_offer_results_last_run_timestamp_seconds") or 0) - time.time()) < 60
        # grocer-8 leaves the book: its series go (the label set is the live offers')
        await OfferResultsGauges(pool, lambda: book(EVERYDAY), None, 60).observe()
        assert sample("cashback_offer_accounts", offer_id="grocer-8", group="holdout") is None
        assert sample("cashback_offer_cost_minor", offer_id="grocer-8", unit="EUR") is None
        assert sample("cashback_offer_accounts", offer_id="everyday-1", group="treated") == 2
    finally:
        await pool.close()


@pytest.mark.asyncio
async def test_the_gauges_wait_for_the_offers_before_their_first_round(database: str) -> None:
    """At the API's start its offer book is empty until the offers topic is read: a first round then would
    leave the gauges without series for a whole interval."""
    ready, since = asyncio.Event(), time.time()
    pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
    gauges = asyncio.create_task(OfferResultsGauges(pool, lambda: OFFERS, None, 3600, offers_ready=ready).run())
    try:
        await asyncio.sleep(0.5)
        assert (REGISTRY.get_sample_value("cashback_offer_results_last_run_timestamp_seconds") or 0) < since
        ready.set()
        for _ in range(100):
            if (REGISTRY.get_sample_value("cashback_offer_results_last_run_timestamp_seconds") or 0) >= since:
                break
            await asyncio.sleep(0.1)
        assert REGISTRY.get_sample_value("cashback_offer_accounts", {"offer_id": "grocer-8", "group": "holdout"}) == 3
    finally:
        gauges.cancel()
        await asyncio.gather(gauges, return_exceptions=True)
        await pool.close()


@pytest.fixture(scope="module")
def settings(database: str, kafka_bootstrap: str, work_dir: Path) -> Settings:
    jwks_dir = work_dir / f"results-auth-{uuid.uuid4().hex[:8]}"
    jwks_dir.mkdir()
    settings = Settings.from_env(
        {
            "DATABASE_URL": database,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "TOPIC_PREFIX": f"results-{uuid.uuid4().hex[:6]}.",
            "RECONCILE_INTERVAL_S": "0",
            "OFFER_RESULTS_INTERVAL_S": "0",
            **api_auth_env(jwks_dir),
        }
    )
    topics = settings.topics()

    async def publish() -> None:  # grocer-8 live (everyday-1 is not: the ledger alone names it), three activations
        await ensure_topics(kafka_bootstrap, topics)
        await publish_offers(settings, CODEC, topics.offers.name, [GROCER])
        messages = []
        for account, active in ((T1, True), (H1, True), (T2, True), (T2, False)):
            partition, key, value = activation_message(CODEC, account, "grocer-8", active, T0, topics.activations.partitions)
            messages.append((topics.activations.name, key, value, partition))
        await send_once(settings, messages)

    asyncio.run(publish())
    return settings


@pytest_asyncio.fixture()
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, Codec(), settings.topics())
    async with app.router.lifespan_context(app):
        deadline = time.monotonic() + 30
        while not (app.state.offers.ready.is_set() and app.state.activations.ready.is_set() and app.state.offers.book.offers):
            assert time.monotonic() < deadline, "the API did not read the offers and activations topics"
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
            yield http


ROUTE = "/v1/operations/offers/{}/results"


@pytest.mark.asyncio
async def test_the_route_answers_a_live_offers_results(api: httpx.AsyncClient) -> None:
    answer = await api.get(ROUTE.format("grocer-8"), headers=api_headers([OPERATIONS]))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["live"], body["holdout_bps"], body["period_from"], body["period_to"]) == (True, 3000, None, None)
    assert (body["eligible_accounts"], body["treated_accounts"], body["holdout_accounts"]) == (5, 2, 3)
    # T2 deactivated: the last word counts; T1 is treated, H1 held out
    assert body["activations"] == {"total": 2, "treated": 1, "holdout": 1}
    eur = next(c for c in body["currencies"] if c["currency"] == "EUR")
    assert eur["treated"] == {
        "accounts": 2,
        "purchases": 3,
        "spend_minor": 18_000,
        "average_basket_minor": 6_000,
        "spend_per_account_minor": 9_000,
        "spend": "180.00 EUR",
    }
    assert (eur["holdout"]["purchases"], eur["holdout"]["average_basket_minor"]) == (4, 6_250)
    assert [c["currency"] for c in body["currencies"]] == ["EUR", "JPY"]
    assert [(c["unit"], c["cost"], c["pending_minor"]) for c in body["cost"]] == [
        ("EUR", "12.80 EUR", 240),
        ("JPY", "400 JPY", 0),
    ]


@pytest.mark.asyncio
async def test_an_offer_gone_from_the_book_keeps_its_results_over_a_period(api: httpx.AsyncClient) -> None:
    params = {"from": (T0 + timedelta(days=5)).isoformat(), "to": (T0 + timedelta(days=30)).isoformat()}
    answer = await api.get(ROUTE.format("everyday-1"), params=params, headers=api_headers([OPERATIONS]))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["live"], body["holdout_bps"], body["activations"]) == (
        False,
        None,
        {"total": 0, "treated": None, "holdout": None},
    )
    assert body["treated_accounts"] == 1 and body["currencies"][0]["treated"]["spend"] == "40.00 EUR"  # H1's day 10


@pytest.mark.asyncio
async def test_the_route_is_for_operations_and_refuses_what_it_cannot_answer(api: httpx.AsyncClient) -> None:
    route = ROUTE.format("grocer-8")
    assert (await api.get(route)).status_code == 401
    assert (await api.get(route, headers=api_headers([ACCOUNTS_READ]))).status_code == 403
    ops = api_headers([OPERATIONS])
    unknown = await api.get(ROUTE.format("no-such-offer"), headers=ops)
    assert unknown.status_code == 404 and "no-such-offer" in unknown.json()["detail"]
    backwards = await api.get(route, params={"from": "2026-12-10T00:00:00Z", "to": "2026-12-01T00:00:00Z"}, headers=ops)
    assert backwards.status_code == 400 and "before" in backwards.json()["detail"]
    naive = await api.get(route, params={"from": "2026-12-01T00:00:00"}, headers=ops)
    assert naive.status_code == 400 and "time zone" in naive.json()["detail"]
    assert (await api.get(route, params={"from": "yesterday"}, headers=ops)).status_code == 422
    # before year 1 once in UTC: before any event, so no bound
    underflow = await api.get(route, params={"from": "0001-01-01T00:00:00+05:00"}, headers=ops)
    assert underflow.status_code == 200 and underflow.json()["period_from"] is None
    assert (await api.get(route, params={"since": "2026-12-01T00:00:00Z"}, headers=ops)).status_code == 400
    spec = (await api.get("/openapi.json")).json()["paths"]["/v1/operations/offers/{offer_id}/results"]["get"]
    assert spec["security"] == [{"bearerAuth": [OPERATIONS]}]
    assert {"400", "401", "403", "404"} <= set(spec["responses"])
    assert {p["name"] for p in spec["parameters"]} == {"offer_id", "from", "to"}


@pytest.mark.asyncio
async def test_an_erasure_changes_none_of_the_figures(db: asyncpg.Connection) -> None:
    before = (await store.figures(db, ["grocer-8"], None, None))["grocer-8"]
    await db.fetchrow("SELECT * FROM erase_account($1, 'test: erasure request', 'tester')", H1)
    after = (await store.figures(db, ["grocer-8"], None, None))["grocer-8"]
    assert after == before
    assert await db.fetchval("SELECT count(*) FROM purchases_not_earned WHERE account_id = $1", H1) == 0
