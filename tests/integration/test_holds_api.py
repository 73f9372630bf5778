"""The abuse controls' operations routes against a real Postgres and Kafka (``stream.api_holds``):
held rewards listed with their rule, paginated; a release or a forfeit sent as an instruction on the
account's partition, which the engine folds into the very movement the ledger then shows; a repeated
decision sends nothing; the other decision is a conflict; scope ``cashback:operations`` only. And
the ledger's side: the HELD balance, the sink's counts of holds, an entry re-sent across the accrual
v3 upgrade is no conflict, the merchant-concentration scan.

The worker is played by the pure engine (the back-test's fold, as the matcher would decide): what
the API publishes is decided by it, and its entries written by the sink's own batch write."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import fastavro
import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY

from schemas.codec import SCHEMA_DIR, Codec
from stream.abuse_scan import MerchantScan
from stream.api import create_app
from stream.auth import ACCOUNTS_READ, OPERATIONS
from stream.backtest import Replay
from stream.core.abuse import DEFAULT_RULES
from stream.core.entries import Entry
from stream.core.events import to_event
from stream.settings import Settings
from stream.sink import count_holds, staging_row
from stream.store.journal import write_batch
from stream.store.migrations import migrate
from tests.factories import T0, book, card_event, generated_card_number, offer
from tests.integration.conftest import api_auth_env, api_headers, fresh_database
from topics.admin import ensure_topics
from topics.catalogue import account_partition, catalogue

pytestmark = pytest.mark.integration

OFFERS = book(offer(pending_days=14, mccs=[]))
CODEC = Codec()


def _replay() -> Replay:
    """hold-1: five purchases of 5.00 at one kiosk within 40 minutes (a burst): each 0.25 held.
    hold-2: three rewarded purchases refunded, then one more: its 2.00 held for the refund loop.
    free-1: one purchase, its 5.00 available. shady-a and shady-b: 150.00 of rewards each at m-shady."""
    replay = Replay(OFFERS, abuse=DEFAULT_RULES)
    for n in range(5):
        replay.decide(
            card_event(
                "CLEARING",
                500,
                account_id="hold-1",
                transaction_ref=f"k{n}",
                merchant_id="m-kiosk",
                occurred_at=T0 + timedelta(minutes=10 * n),
            )
        )
    for n in range(3):
        replay.decide(
            card_event("CLEARING", 10_000, account_id="hold-2", transaction_ref=f"p{n}", occurred_at=T0 + timedelta(hours=n))
        )
        replay.decide(
            card_event(
                "REFUND",
                10_000,
                account_id="hold-2",
                transaction_ref=f"r{n}",
                original_transaction_ref=f"p{n}",
                processing_code="REFUND",
                occurred_at=T0 + timedelta(days=1, hours=n),
            )
        )
    replay.decide(card_event("CLEARING", 4_000, account_id="hold-2", transaction_ref="p9", occurred_at=T0 + timedelta(days=2)))
    replay.decide(card_event("CLEARING", 10_000, account_id="free-1", transaction_ref="f1", occurred_at=T0))
    for account in ("shady-a", "shady-b"):
        replay.decide(
            card_event("CLEARING", 300_000, account_id=account, transaction_ref="s1", merchant_id="m-shady", occurred_at=T0)
        )
    replay.pass_time(T0 + timedelta(days=20))
    return replay


async def _write(database: str, entries: list[Entry]) -> Any:
    connection = await asyncpg.connect(database)
    try:
        rows = []
        for position, entry in enumerate(entries):
            raw = CODEC.encode("accrual", entry.record())
            rows.append(staging_row(position, CODEC.decode(raw)[1], raw, frozenset({CODEC.schema_id("accrual")})))
        return await write_batch(connection, rows)
    finally:
        await connection.close()


REPLAY: dict[str, Replay] = {}


@pytest.fixture(scope="module")
def database(postgres_url: str) -> str:
    database = fresh_database(postgres_url)

    async def prepare() -> None:
        connection = await asyncpg.connect(database)
        try:
            await migrate(connection)
        finally:
            await connection.close()

    asyncio.run(prepare())
    REPLAY["fold"] = replay = _replay()
    result = asyncio.run(_write(database, list(replay.entries.values())))
    # The sink counts each new entry into HELD by its rule (exactly the rows written: a replay counts nothing).
    assert sorted(result.holds) == ["HELD:purchase_burst"] * 5 + ["HELD:refund_loop"]
    assert asyncio.run(_write(database, list(replay.entries.values()))).holds == ()
    return database


@pytest.fixture(scope="module")
def settings(database: str, kafka_bootstrap: str, work_dir: Path) -> Settings:
    jwks_dir = work_dir / f"holds-auth-{uuid.uuid4().hex[:8]}"
    jwks_dir.mkdir()
    settings = Settings.from_env(
        {
            "DATABASE_URL": database,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "TOPIC_PREFIX": f"holds-{uuid.uuid4().hex[:6]}.",
            **api_auth_env(jwks_dir),
        }
    )
    asyncio.run(ensure_topics(kafka_bootstrap, catalogue(settings.topic_prefix, settings.topic_partitions)))
    return settings


@pytest_asyncio.fixture()
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, Codec(), settings.topics())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
            yield http


@pytest.fixture()
def ops(api: httpx.AsyncClient) -> httpx.AsyncClient:
    api.headers.update(api_headers([OPERATIONS], subject="ops-anna"))
    return api


async def _instructions(settings: Settings) -> list[Any]:
    """Every message of the instructions topic so far."""
    consumer = AIOKafkaConsumer(
        settings.topics().instructions.name,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=3_000)
    finally:
        await consumer.stop()
    return sorted((m for records in batches.values() for m in records), key=lambda m: (m.partition, m.offset))


async def _fold(settings: Settings, database: str, instruction_id: str) -> list[Entry]:
    """The worker's part: the instruction published, decided in the account's state, its entries written."""
    (message,) = [m for m in await _instructions(settings) if CODEC.decode(m.value)[1]["event_id"] == instruction_id]
    _, record = CODEC.decode(message.value, expected_subject="account_instruction")
    assert message.key == record["account_id"].encode()
    assert message.partition == account_partition(record["account_id"], settings.topic_partitions)
    replay = REPLAY["fold"]
    before = set(replay.entries)
    replay.decide(to_event(record))
    entries = [e for key, e in replay.entries.items() if key not in before]
    await _write(database, entries)
    return entries


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.asyncio
async def test_held_rewards_are_listed_with_their_rule_latest_first_page_by_page(ops: httpx.AsyncClient) -> None:
    seen, cursor = [], None
    while True:
        page = (await ops.get("/v1/operations/holds", params={"limit": 4, **({"cursor": cursor} if cursor else {})})).json()
        seen += page["holds"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 6
    assert [h["account_id"] for h in seen] == ["hold-2"] + ["hold-1"] * 5  # hold-2's window ended last
    loop = seen[0]
    assert (loop["transaction_ref"], loop["held_minor"], loop["held"], loop["rule"]) == ("p9", 200, "2.00 EUR", "refund_loop")
    assert loop["detail"].startswith(
        "return window of 14 days over: held for review (refund_loop: 3 of 4 rewarded purchases refunded (75%)"
    )
    burst = seen[1]
    assert (burst["rule"], burst["merchant_id"], burst["held_minor"], burst["offer_id"]) == (
        "purchase_burst",
        "m-kiosk",
        25,
        "grocery-5",
    )
    one = (await ops.get("/v1/operations/holds", params={"account_id": "hold-2"})).json()["holds"]
    assert [h["transaction_ref"] for h in one] == ["p9"]
    (line,) = (await ops.get("/v1/accounts/hold-2/balances")).json()["balances"]
    assert (line["held_minor"], line["available_minor"], line["clawed_back_minor"]) == (200, 0, 1_500)
    history = (await ops.get("/v1/accounts/hold-2/history", params={"limit": 1})).json()["entries"]
    assert (history[0]["entry_kind"], history[0]["credit_book"], history[0]["explanation"]["reason"]) == (
        "HELD",
        "HELD",
        "refund_loop",
    )


@pytest.mark.asyncio
async def test_a_release_is_sent_once_folded_by_the_engine_and_a_repeat_sends_nothing(
    ops: httpx.AsyncClient, settings: Settings, database: str
) -> None:
    body = {"account_id": "hold-1", "transaction_ref": "k0", "reason": "receipts checked with the customer"}
    response = await ops.post("/v1/operations/holds/release", json=body)
    assert response.status_code == 202, response.text
    review = response.json()
    assert (review["status"], review["decision"], review["held"]) == (
        "accepted",
        "release",
        [{"offer_id": "grocery-5", "currency": "EUR", "held_minor": 25}],
    )
    released_before = _sample("cashback_hold_reviews_total", {"rule": "purchase_burst", "decision": "released"})

    (entry,) = await _fold(settings, database, review["instruction_id"])
    assert (entry.entry_kind, entry.debit_book, entry.credit_book, entry.amount_minor) == (
        "HOLD_RELEASED",
        "HELD",
        "AVAILABLE",
        25,
    )
    assert entry.explanation.detail == "released after review by ops-anna: receipts checked with the customer"
    count_holds([f"{entry.entry_kind}:{entry.explanation.reason}"])
    assert _sample("cashback_hold_reviews_total", {"rule": "purchase_burst", "decision": "released"}) == released_before + 1

    sent = len(await _instructions(settings))
    again = await ops.post("/v1/operations/holds/release", json={**body, "reason": "clicked twice"})
    assert again.status_code == 200 and again.json()["status"] == "already_released" and again.json()["instruction_id"] is None
    assert len(await _instructions(settings)) == sent  # nothing sent
    other = await ops.post("/v1/operations/holds/forfeit", json=body)
    assert other.status_code == 409 and "HOLD_RELEASED" in other.json()["detail"]
    listed = (await ops.get("/v1/operations/holds", params={"account_id": "hold-1"})).json()["holds"]
    assert "k0" not in {h["transaction_ref"] for h in listed} and len(listed) == 4
    (line,) = (await ops.get("/v1/accounts/hold-1/balances")).json()["balances"]
    assert (line["held_minor"], line["available_minor"]) == (100, 25)


@pytest.mark.asyncio
async def test_a_forfeit_moves_the_held_reward_to_the_expense_once(
    ops: httpx.AsyncClient, settings: Settings, database: str
) -> None:
    body = {"account_id": "hold-2", "transaction_ref": "p9", "offer_id": "grocery-5", "reason": "refund loop confirmed"}
    review = (await ops.post("/v1/operations/holds/forfeit", json=body)).json()
    (entry,) = await _fold(settings, database, review["instruction_id"])
    assert (entry.entry_kind, entry.debit_book, entry.credit_book, entry.amount_minor) == (
        "HOLD_FORFEITED",
        "HELD",
        "EXPENSE",
        200,
    )
    assert entry.explanation.reason == "refund_loop"
    again = await ops.post("/v1/operations/holds/forfeit", json=body)
    assert again.status_code == 200 and again.json()["status"] == "already_forfeited"
    (line,) = (await ops.get("/v1/accounts/hold-2/balances")).json()["balances"]
    assert (line["held_minor"], line["clawed_back_minor"], line["lifetime_earned_minor"]) == (0, 1_700, 1_700)


@pytest.mark.asyncio
async def test_two_decisions_sent_before_the_first_is_folded_move_the_reward_once(
    ops: httpx.AsyncClient, settings: Settings, database: str
) -> None:
    body = {"account_id": "hold-1", "transaction_ref": "k1", "reason": "two operators at once"}
    first = (await ops.post("/v1/operations/holds/release", json=body)).json()
    second = (await ops.post("/v1/operations/holds/forfeit", json=body)).json()
    assert first["status"] == second["status"] == "accepted"
    assert [e.entry_kind for e in await _fold(settings, database, first["instruction_id"])] == ["HOLD_RELEASED"]
    assert await _fold(settings, database, second["instruction_id"]) == []  # the engine finds nothing held
    assert REPLAY["fold"].outcomes[-1] == "no_change"


@pytest.mark.asyncio
async def test_bad_decisions_are_refused_with_a_message(ops: httpx.AsyncClient) -> None:
    unknown = await ops.post(
        "/v1/operations/holds/release", json={"account_id": "hold-1", "transaction_ref": "nope", "reason": "why"}
    )
    assert unknown.status_code == 404 and "was held" in unknown.json()["detail"]
    never = await ops.post(
        "/v1/operations/holds/release", json={"account_id": "free-1", "transaction_ref": "f1", "reason": "why"}
    )
    assert never.status_code == 404
    card = {"account_id": "hold-1", "transaction_ref": "k2", "reason": f"card {generated_card_number()} stolen"}
    refused = await ops.post("/v1/operations/holds/release", json=card)
    assert (
        refused.status_code == 400
        and refused.json()["detail"] == "the instruction would be refused: field reason: card_number_detected"
    )
    short = await ops.post("/v1/operations/holds/release", json={"account_id": "hold-1", "transaction_ref": "k2", "reason": ""})
    assert short.status_code == 422
    assert (await ops.get("/v1/operations/holds", params={"cursor": "not-a-cursor"})).status_code == 400


@pytest.mark.asyncio
async def test_only_operations_may_see_and_decide_holds(api: httpx.AsyncClient) -> None:
    customer = api_headers([ACCOUNTS_READ], ["hold-1"])
    body = {"account_id": "hold-1", "transaction_ref": "k3", "reason": "my own reward"}
    for method, path, payload in (
        ("GET", "/v1/operations/holds", None),
        ("POST", "/v1/operations/holds/release", body),
        ("POST", "/v1/operations/holds/forfeit", body),
        ("GET", "/v1/operations/merchant-flags", None),
    ):
        refused = await api.request(method, path, json=payload, headers=customer)
        assert refused.status_code == 403, (path, refused.text)
        assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
        assert (await api.request(method, path, json=payload)).status_code == 401
    # the customer still sees its held balance
    (line,) = (await api.get("/v1/accounts/hold-1/balances", headers=customer)).json()["balances"]
    assert line["held_minor"] > 0
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert paths["/v1/operations/holds/release"]["post"]["security"] == [{"bearerAuth": [OPERATIONS]}]


@pytest.mark.asyncio
async def test_the_scan_flags_a_merchant_concentrating_rewards_once_and_tells_its_accounts(
    ops: httpx.AsyncClient, settings: Settings
) -> None:
    scan = MerchantScan(settings, settings.topics(), CODEC, DEFAULT_RULES.merchant_concentration)
    now = T0 + timedelta(days=3)
    (detail,) = await scan.scan(now)
    assert detail == (
        "merchant m-shady paid 300.00 EUR of rewards to 2 accounts in the 7 days to 2026-12-04 10:00 UTC; "
        "rule: 3 accounts or fewer, 200.00 EUR or more"
    )
    assert await scan.scan(now + timedelta(hours=1)) == []  # flagged until its flag ends
    holds = [CODEC.decode(m.value)[1] for m in await _instructions(settings)]
    holds = [h for h in holds if h["instruction"] == "HOLD_MERCHANT"]
    assert sorted(h["account_id"] for h in holds) == ["shady-a", "shady-b"]
    assert {(h["merchant_id"], h["reason"], h["until"]) for h in holds} == {("m-shady", detail, now + timedelta(days=30))}
    (flag,) = (await ops.get("/v1/operations/merchant-flags")).json()["flags"]
    assert (flag["merchant_id"], flag["accounts"], flag["total_minor"], flag["currency"]) == ("m-shady", 2, 30_000, "EUR")
    # m-kiosk's rewards went to one account but add up to 1.25, m-grocer's to two accounts 20.00: no flag


@pytest.mark.asyncio
async def test_an_entry_sent_before_the_accrual_v3_upgrade_and_again_after_it_is_a_duplicate(database: str) -> None:
    """A worker re-emits a recent event's entries as it stored them (no merchant, no purchase ref):
    the same entry in version 2 and version 3 bytes has one fingerprint."""
    entry = Entry.of({**card_entry(), "merchant_id": None, "purchase_ref": None})
    v2 = fastavro.parse_schema(json.loads((SCHEMA_DIR / "accrual.v2.avsc").read_text()))
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, json.loads((SCHEMA_DIR / "ids.json").read_text())["accrual.v2.avsc"]))
    fastavro.schemaless_writer(buffer, v2, entry.record())
    old, new = buffer.getvalue(), CODEC.encode("accrual", entry.record())
    appending = frozenset({CODEC.schema_id("accrual")})  # the newest version also appended sponsor_id (accrual v6)
    old_row, new_row = (staging_row(0, CODEC.decode(raw)[1], raw, appending, appending) for raw in (old, new))
    assert old_row[15] == new_row[15]
    connection = await asyncpg.connect(database)
    try:
        first = await write_batch(connection, [old_row])
        second = await write_batch(connection, [new_row])
    finally:
        await connection.close()
    assert (first.written, second.written, second.duplicates, second.conflicts) == (1, 0, 1, ())


def card_entry() -> dict[str, Any]:
    """An entry the engine makes, as a record."""
    replay = Replay(book())
    replay.decide(card_event("AUTHORIZATION", 10_000, account_id="upgrade-1", transaction_ref="u1"))
    (entry,) = replay.entries.values()
    return entry.record()


@pytest.mark.asyncio
async def test_an_erasure_takes_the_purchase_ref_along_with_the_transaction_ref(database: str) -> None:
    """Migration 0009's trigger under 0008's erasure: the purchase's own entries keep one reference
    (its pseudonym); a refund's entry, whose purchase's pseudonym cannot be computed, keeps none."""
    from stream.store import erasure

    replay = Replay(OFFERS)
    replay.decide(card_event("CLEARING", 10_000, account_id="erase-1", transaction_ref="e1"))
    replay.decide(
        card_event(
            "REFUND", 4_000, account_id="erase-1", transaction_ref="e1-r", original_transaction_ref="e1", processing_code="REFUND"
        )
    )
    await _write(database, list(replay.entries.values()))
    connection = await asyncpg.connect(database)
    try:
        logged = await erasure.erase(connection, "erase-1", "DSR-2026-0099", "dpo")
        rows = await connection.fetch(
            "SELECT entry_kind, transaction_ref, purchase_ref FROM ledger_entries WHERE account_id = $1 ORDER BY entry_seq",
            logged.pseudonym,
        )
    finally:
        await connection.close()
    (confirmed, clawed) = rows
    assert confirmed["entry_kind"] == "CONFIRMED" and confirmed["purchase_ref"] == confirmed["transaction_ref"] != "e1"
    assert clawed["entry_kind"] == "CLAWED_BACK" and clawed["purchase_ref"] is None and clawed["transaction_ref"] != "e1-r"
