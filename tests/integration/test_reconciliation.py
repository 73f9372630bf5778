"""Reconciliation against a real Postgres (migration 0011, ``stream.reconciliation``): the engine's items written by
the sink's own batch write exactly once across a replay (fast and judged paths), ``open_pending`` kept exact by the
ledger's trigger (compared with the ledger itself), the gauges' values on a known ledger, the operations listing
(pagination, scope, 4xx), and the erasure of an account's items and pending.

The worker is played by the pure engine (the back-test's fold, as the matcher would decide), its entries encoded
and staged as the sink stages them."""

from __future__ import annotations

import asyncio
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
from stream.api import create_app
from stream.auth import ACCOUNTS_READ, OPERATIONS
from stream.backtest import Replay
from stream.core.entries import Entry
from stream.reconciliation import ReconciliationGauges, offer_windows
from stream.settings import Settings
from stream.sink import appending_ids, count_items, staging_row
from stream.store.journal import write_batch
from stream.store.migrations import migrate
from tests.factories import book, card_event, offer
from tests.integration.conftest import api_auth_env, api_headers, fresh_database
from topics.admin import ensure_topics

pytestmark = pytest.mark.integration

CODEC = Codec()
NOW = datetime.now(UTC).replace(microsecond=0)
OFFERS = book(offer(), offer(offer_id="fuel-7", name="fuel", mccs=["5541"], auth_expiry_days=7))

# What the ledger holds pending per (account, purchase) after ``_replay``, and how old it is.
UNCLEARED = {"lt_1d": 1, "1d_to_7d": 2, "7d_to_30d": 2, "ge_30d": 1}  # 1d_to_7d: p-1 b and u-2 half


def _replay() -> Replay:
    """u-1: three refunds and a chargeback of purchases never seen, u-2: one refund of a purchase only authorised.
    f-1: a force post that earns, f-2: one that earns nothing (cash). p-1: purchases authorised 12 hours, 3, 10
    (grocery, 30 days) and 40 days ago, and a fuel purchase (7 days) 10 days ago; one authorised and cleared."""
    replay = Replay(OFFERS)
    for n in range(3):
        replay.decide(refund("u-1", f"gone-{n}", NOW - timedelta(hours=5 - n)))
    replay.decide(card_event("CHARGEBACK", 7_000, account_id="u-1", transaction_ref="cb-1", original_transaction_ref="gone-9"))
    replay.decide(
        card_event("AUTHORIZATION", 2_000, account_id="u-2", transaction_ref="half", occurred_at=NOW - timedelta(days=1))
    )
    replay.decide(refund("u-2", "half", NOW - timedelta(hours=2)))
    replay.decide(card_event("CLEARING", 10_000, account_id="f-1", transaction_ref="fp-1", event_id="force-earns"))
    replay.decide(card_event("CLEARING", 10_000, account_id="f-2", transaction_ref="fp-2", event_id="force-cash", mcc="6011"))
    # f-3: a clearing before its authorisation (DOMAIN case 8): a force post first, answered by the late authorisation
    replay.decide(card_event("CLEARING", 10_000, account_id="f-3", transaction_ref="fp-3", event_id="force-late"))
    replay.decide(card_event("AUTHORIZATION", 10_000, account_id="f-3", transaction_ref="fp-3", event_id="auth-late"))
    for ref, age, mcc in (("a", 0.5, "5411"), ("b", 3, "5411"), ("c", 10, "5411"), ("d", 40, "5411"), ("e", 10, "5541")):
        replay.decide(
            card_event(
                "AUTHORIZATION", 10_000, account_id="p-1", transaction_ref=ref, mcc=mcc, occurred_at=NOW - timedelta(days=age)
            )
        )
    replay.decide(
        card_event("AUTHORIZATION", 10_000, account_id="p-1", transaction_ref="done", occurred_at=NOW - timedelta(days=2))
    )
    replay.decide(card_event("CLEARING", 10_000, account_id="p-1", transaction_ref="done", occurred_at=NOW - timedelta(days=1)))
    return replay


def refund(account: str, purchase: str, at: datetime) -> Any:
    return card_event(
        "REFUND",
        4_000,
        account_id=account,
        transaction_ref=f"{purchase}-r",
        original_transaction_ref=purchase,
        processing_code="REFUND",
        occurred_at=at,
    )


def _rows(entries: list[Entry]) -> list[tuple[Any, ...]]:
    rows = []
    for position, entry in enumerate(entries):
        raw = CODEC.encode("accrual", entry.record())
        rows.append(staging_row(position, CODEC.decode(raw)[1], raw, appending_ids(CODEC)))
    return rows


async def _write(database: str, entries: list[Entry]) -> Any:
    connection = await asyncpg.connect(database)
    try:
        return await write_batch(connection, _rows(entries))
    finally:
        await connection.close()


# The oracle of open_pending: the ledger's PENDING book per purchase and offer, from every entry.
_FROM_LEDGER = """
SELECT account_id, coalesce(purchase_ref, transaction_ref) AS purchase_ref, coalesce(offer_id, '') AS offer_id,
    currency::text AS currency, sum(book_movement('PENDING', debit_book, credit_book, amount_minor))::bigint AS pending_minor,
    min(occurred_at) FILTER (WHERE credit_book = 'PENDING') AS since
FROM ledger_entries WHERE debit_book = 'PENDING' OR credit_book = 'PENDING'
GROUP BY 1, 2, 3, 4 HAVING sum(book_movement('PENDING', debit_book, credit_book, amount_minor)) > 0
ORDER BY 1, 2, 3, 4
"""
_KEPT = "SELECT account_id, purchase_ref, offer_id, currency::text AS currency, pending_minor, since FROM open_pending ORDER BY 1, 2, 3, 4"


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
    replay = _replay()
    entries = list(replay.entries.values())
    first = asyncio.run(_write(database, entries))
    assert sorted(first.items) == ["force_post"] * 3 + ["late_authorisation", "unknown_chargeback"] + ["unknown_refund"] * 4
    again = asyncio.run(_write(database, entries))  # the whole batch replayed: the judged path, nothing new
    assert (again.written, again.items) == (0, ())
    assert again.duplicates == first.written
    return database


@pytest.mark.asyncio
async def test_each_item_is_in_the_table_once_with_its_figures(database: str) -> None:
    connection = await asyncpg.connect(database)
    try:
        rows = await connection.fetch(
            "SELECT item_id, kind, account_id, purchase_ref, amount_minor, currency::text AS currency, detail"
            " FROM reconciliation_items ORDER BY item_seq"
        )
        ledger_ids = {r["accrual_id"] for r in await connection.fetch("SELECT accrual_id FROM ledger_entries")}
    finally:
        await connection.close()
    assert len(rows) == 9 and len({r["item_id"] for r in rows}) == 9
    assert all(r["item_id"].endswith("#reconciliation") for r in rows) and not ledger_ids & {r["item_id"] for r in rows}
    half = next(r for r in rows if r["account_id"] == "u-2")
    assert (half["kind"], half["purchase_ref"], half["amount_minor"], half["currency"]) == (
        "unknown_refund",
        "half",
        4_000,
        "EUR",
    )
    assert half["detail"] == "refund of 40.00 EUR for purchase half: not cleared (status authorized)"
    force = next(r for r in rows if r["item_id"] == "force-earns#reconciliation")
    assert force["kind"] == "force_post" and "force-earns#0" in ledger_ids  # the entry kept its id


@pytest.mark.asyncio
async def test_a_gdpr_export_holds_the_accounts_items(database: str) -> None:
    from stream.store import erasure

    connection = await asyncpg.connect(database)
    try:
        held = await erasure.holdings(connection, "u-1")
    finally:
        await connection.close()
    assert [(i["kind"], i["purchase_ref"]) for i in held.items] == [
        ("unknown_refund", "gone-0"),
        ("unknown_refund", "gone-1"),
        ("unknown_refund", "gone-2"),
        ("unknown_chargeback", "gone-9"),
    ]
    assert not held.empty() and not held.history  # u-1 has no ledger line: the items alone are held


@pytest.mark.asyncio
async def test_items_among_new_entries_and_replays_are_written_once_by_the_fast_and_the_judged_path(database: str) -> None:
    replay = Replay(OFFERS)
    replay.decide(refund("mix-1", "nowhere", NOW))
    replay.decide(card_event("CLEARING", 5_000, account_id="mix-1", transaction_ref="fp", event_id="mix-force"))
    entries = list(replay.entries.values())
    fast = await _write(database, entries)  # nothing held under these ids: written without looking
    assert sorted(fast.items) == ["force_post", "unknown_refund"] and fast.written == 1
    replay.decide(refund("mix-1", "elsewhere", NOW))
    judged = await _write(database, list(replay.entries.values()))  # a held entry among them: judged
    assert (judged.items, judged.written, judged.duplicates) == (("unknown_refund",), 0, 1)
    connection = await asyncpg.connect(database)
    try:
        assert await connection.fetchval("SELECT count(*) FROM reconciliation_items WHERE account_id = 'mix-1'") == 3
    finally:
        await connection.close()


@pytest.mark.asyncio
async def test_an_item_held_already_sends_its_batch_to_the_judged_path_and_is_written_once(database: str) -> None:
    # Written without looking, items are copied: the table's key refuses one it holds, and the batch is judged.
    replay = Replay(OFFERS)
    replay.decide(refund("held-1", "first", NOW))
    first = await _write(database, list(replay.entries.values()))
    assert first.items == ("unknown_refund",)
    again = await _write(database, list(replay.entries.values()))  # items alone, all held: no error, nothing new
    assert (again.items, again.written) == ((), 0)
    replay.decide(card_event("CLEARING", 7_000, account_id="held-1", transaction_ref="fp2", event_id="held-force"))
    replay.decide(refund("held-1", "second", NOW))
    mixed = await _write(database, list(replay.entries.values()))  # the held item beside new lines
    assert sorted(mixed.items) == ["force_post", "unknown_refund"] and mixed.written == 1
    connection = await asyncpg.connect(database)
    try:
        kept = await connection.fetch(
            "SELECT item_id, kind, amount_minor FROM reconciliation_items WHERE account_id = 'held-1' ORDER BY item_seq"
        )
    finally:
        await connection.close()
    assert [r["kind"] for r in kept] == ["unknown_refund", "force_post", "unknown_refund"]
    assert len({r["item_id"] for r in kept}) == 3 and kept[1]["amount_minor"] == 7_000


def test_the_sink_counts_new_items_by_kind_and_a_closed_set_of_labels() -> None:
    def sample(kind: str) -> float:
        return REGISTRY.get_sample_value("cashback_reconciliation_items_total", {"kind": kind}) or 0.0

    before = sample("force_post"), sample("other")
    count_items(["force_post", "force_post", "made-up"])
    assert (sample("force_post"), sample("other")) == (before[0] + 2, before[1] + 1)


@pytest.mark.asyncio
async def test_open_pending_is_the_ledgers_pending_book_per_purchase(database: str) -> None:
    connection = await asyncpg.connect(database)
    try:
        kept = [dict(r) for r in await connection.fetch(_KEPT)]
        assert kept == [dict(r) for r in await connection.fetch(_FROM_LEDGER)]
        assert {(r["account_id"], r["purchase_ref"]) for r in kept} >= {("p-1", ref) for ref in "abcde"}
        assert ("p-1", "done") not in {(r["account_id"], r["purchase_ref"]) for r in kept}
    finally:
        await connection.close()
    # A later batch clears one and expires another: they leave it, in the same transaction.
    replay = Replay(OFFERS)
    replay.decide(card_event("AUTHORIZATION", 3_000, account_id="p-2", transaction_ref="x", occurred_at=NOW - timedelta(days=1)))
    replay.decide(card_event("AUTHORIZATION", 3_000, account_id="p-2", transaction_ref="y", occurred_at=NOW - timedelta(days=1)))
    await _write(database, list(replay.entries.values()))
    before = set(replay.entries)
    replay.decide(card_event("CLEARING", 3_000, account_id="p-2", transaction_ref="x", occurred_at=NOW))
    replay.decide(card_event("AUTHORIZATION_EXPIRY", 3_000, account_id="p-2", transaction_ref="y", occurred_at=NOW))
    await _write(database, [e for k, e in replay.entries.items() if k not in before])
    connection = await asyncpg.connect(database)
    try:
        assert [dict(r) for r in await connection.fetch(_KEPT)] == [dict(r) for r in await connection.fetch(_FROM_LEDGER)]
        assert await connection.fetchval("SELECT count(*) FROM open_pending WHERE account_id = 'p-2'") == 0
    finally:
        await connection.close()


@pytest.mark.asyncio
async def test_the_gauges_on_a_known_ledger(database: str) -> None:
    pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
    try:
        figures = await ReconciliationGauges(pool, lambda: offer_windows(OFFERS), 60).observe(NOW)
    finally:
        await pool.close()
    assert figures.uncleared == UNCLEARED
    # grocery 40 days ago (30-day window) and fuel 10 days ago (7-day window); grocery 10 days ago is within its 30
    assert figures.past_window == 2
    assert abs(figures.oldest_s - 40 * 86_400) < 5

    def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
        return REGISTRY.get_sample_value(name, labels or {})

    assert {b: sample("cashback_reconciliation_uncleared_authorisations", {"age": b}) for b in UNCLEARED} == UNCLEARED
    assert sample("cashback_reconciliation_pending_past_window") == 2
    assert sample("cashback_reconciliation_items_last_day", {"kind": "unknown_refund"}) >= 4  # type: ignore[operator]
    assert sample("cashback_reconciliation_items_last_day", {"kind": "unknown_chargeback_reversal"}) == 0
    # Without the fuel offer in the book its purchase is judged on the default 30 days: no longer past
    pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
    try:
        assert (await ReconciliationGauges(pool, lambda: {}, 60).observe(NOW)).past_window == 1
    finally:
        await pool.close()


@pytest.fixture(scope="module")
def settings(database: str, kafka_bootstrap: str, work_dir: Path) -> Settings:
    jwks_dir = work_dir / f"recon-auth-{uuid.uuid4().hex[:8]}"
    jwks_dir.mkdir()
    settings = Settings.from_env(
        {
            "DATABASE_URL": database,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "TOPIC_PREFIX": f"recon-{uuid.uuid4().hex[:6]}.",
            "RECONCILE_INTERVAL_S": "0",
            **api_auth_env(jwks_dir),
        }
    )
    # the API's offer and activation mirrors read their topics: missing, each stop waited its bound (5 s)
    asyncio.run(ensure_topics(kafka_bootstrap, [settings.topics().offers, settings.topics().activations]))
    return settings


@pytest_asyncio.fixture()
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, Codec(), settings.topics())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
            yield http


@pytest.mark.asyncio
async def test_the_listing_pages_one_kind_latest_first(api: httpx.AsyncClient) -> None:
    headers = api_headers([OPERATIONS])
    seen, cursor, pages = [], None, 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        answer = await api.get("/v1/operations/reconciliation/unknown_refund", params=params, headers=headers)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [i["item_seq"] for i in seen] == sorted((i["item_seq"] for i in seen), reverse=True)
    assert len({i["item_id"] for i in seen}) == len(seen) >= 5 and pages == (len(seen) + 1) // 2
    assert {i["kind"] for i in seen} == {"unknown_refund"}
    half = next(i for i in seen if i["account_id"] == "u-2")
    assert (half["amount"], half["purchase_ref"]) == ("40.00 EUR", "half")
    one = await api.get("/v1/operations/reconciliation/unknown_refund", params={"account_id": "u-1"}, headers=headers)
    assert sorted(i["purchase_ref"] for i in one.json()["items"]) == ["gone-0", "gone-1", "gone-2"]
    force = (await api.get("/v1/operations/reconciliation/force_post", headers=headers)).json()["items"]
    assert {i["item_id"] for i in force} >= {"force-earns#reconciliation", "force-cash#reconciliation"}
    answered = {i["item_id"]: i["authorised_later"] for i in force}
    assert answered["force-late#reconciliation"] and not answered["force-earns#reconciliation"]
    late = (await api.get("/v1/operations/reconciliation/late_authorisation", headers=headers)).json()["items"]
    assert [(i["item_id"], i["transaction_ref"], i["authorised_later"]) for i in late] == [
        ("auth-late#reconciliation", "fp-3", False)
    ]


@pytest.mark.asyncio
async def test_the_listing_is_for_operations_only_and_refuses_what_it_cannot_read(api: httpx.AsyncClient) -> None:
    route = "/v1/operations/reconciliation/unknown_refund"
    assert (await api.get(route)).status_code == 401
    assert (await api.get(route, headers=api_headers([ACCOUNTS_READ]))).status_code == 403
    ops = api_headers([OPERATIONS])
    bad_kind = await api.get("/v1/operations/reconciliation/lost_pennies", headers=ops)
    assert bad_kind.status_code == 404 and "unknown_refund" in bad_kind.json()["detail"]
    bad_cursor = await api.get(route, params={"cursor": "bm90LWEtbnVtYmVy"}, headers=ops)
    assert bad_cursor.status_code == 400 and "cursor" in bad_cursor.json()["detail"]
    assert (await api.get(route, params={"limit": 0}, headers=ops)).status_code == 422
    assert (await api.get(route, params={"limit": 501}, headers=ops)).status_code == 422
    assert (await api.get(route, params={"sort": "asc"}, headers=ops)).status_code == 400


@pytest.mark.asyncio
async def test_an_erasure_takes_the_accounts_items_and_pending_along(database: str) -> None:
    from stream.store import erasure

    replay = Replay(OFFERS)
    replay.decide(refund("erase-r", "never", NOW))
    replay.decide(card_event("AUTHORIZATION", 10_000, account_id="erase-r", transaction_ref="open", occurred_at=NOW))
    await _write(database, list(replay.entries.values()))
    connection = await asyncpg.connect(database)
    try:
        logged = await erasure.erase(connection, "erase-r", "DSR-2026-0111", "dpo")
        items = await connection.fetch("SELECT * FROM reconciliation_items WHERE account_id = $1", logged.pseudonym)
        named = await connection.fetchval(
            "SELECT (SELECT count(*) FROM reconciliation_items WHERE account_id = 'erase-r')"
            " + (SELECT count(*) FROM open_pending WHERE account_id = 'erase-r')"
        )
        pending = await connection.fetch("SELECT purchase_ref FROM open_pending WHERE account_id = $1", logged.pseudonym)
        ledger_ref = await connection.fetchval(
            "SELECT DISTINCT transaction_ref FROM ledger_entries WHERE account_id = $1", logged.pseudonym
        )
        with pytest.raises(asyncpg.CheckViolationError):  # the account is erased: no new row names it
            late = Replay(OFFERS)
            late.decide(refund("erase-r", "later", NOW))
            await write_batch(connection, _rows(list(late.entries.values())))
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # append-only outside an erasure
            await connection.execute("UPDATE reconciliation_items SET detail = 'x'")
    finally:
        await connection.close()
    assert logged.reconciliation_rows == 1 and named == 0
    (item,) = items
    assert (item["kind"], item["amount_minor"], item["detail"]) == ("unknown_refund", 4_000, "erased")
    assert "never" not in (item["purchase_ref"], item["transaction_ref"]) and item["source_event_id"] not in item["detail"]
    assert item["item_id"].endswith("#reconciliation") and "erase-r" not in item["item_id"]
    assert [p["purchase_ref"] for p in pending] == [ledger_ref]  # the purchase's pseudonym, as its entries have it
