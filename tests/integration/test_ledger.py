"""The Postgres ledger: balances from the SQL equal the pure engine's, a replayed batch changes
nothing, event ids are the account's, conflicts are recorded, dead-lettered and not written, the
journal is append-only, and a sink facing a Postgres outage blocks and retries the same batch
instead of skipping it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from prometheus_client import REGISTRY

from schemas.codec import Codec
from stream.backtest import replay
from stream.core.balances import BALANCE_FIELDS, balances
from stream.core.entries import Entry, Explanation, moves_money
from stream.core.offer_parsing import parse_offer
from stream.core.offers import OfferBook
from stream.localstack.postgres import EmbeddedPostgres
from stream.localstack.process import free_port
from stream.offer_admin import load_offers_file
from stream.settings import Settings
from stream.simulate import Scenario, generate
from stream.sink import Sink, staging_row
from stream.store import journal
from stream.store.journal import BatchResult, write_batch
from stream.store.migrations import MIGRATIONS_DIR, migrate
from stream.store.staged_rows import stage
from tests.integration.conftest import REPO_ROOT, fresh_database
from topics.catalogue import catalogue

pytestmark = pytest.mark.integration

CODEC = Codec()


def simulated_entries(purchases: int, seed: int) -> list[dict[str, Any]]:
    """The ledger the simulator's stream gives, by the pure engine (the back-test)."""
    offers = OfferBook.of(load_offers_file(REPO_ROOT / "deploy" / "offers" / "example.yaml"))
    result = replay(generate(Scenario(seed=seed, accounts=50, purchases=purchases, bad_ratio=0)), offers)
    return [entry.record() for entry in result.entries.values()]


def rows_of(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    rows = []
    for position, entry in enumerate(entries):
        raw = CODEC.encode("accrual", entry)
        rows.append(staging_row(position, CODEC.decode(raw)[1], raw))
    return rows


async def _connect_migrated(url: str) -> asyncpg.Connection:
    connection = await asyncpg.connect(url)
    await migrate(connection)
    return connection


async def _migrate_and_close(url: str) -> None:
    connection = await _connect_migrated(url)
    await connection.close()


async def _balances(connection: asyncpg.Connection) -> dict[tuple[str, str, str], dict[str, int]]:
    rows = await connection.fetch("SELECT * FROM balances")
    return {(r["account_id"], r["reward_kind"], r["currency"]): {f: r[f] for f in BALANCE_FIELDS} for r in rows}


@pytest.fixture()
def database(postgres_url: str) -> str:
    return fresh_database(postgres_url)


def test_sql_balances_equal_the_engine_and_a_replay_changes_nothing(database: str) -> None:
    entries = simulated_entries(purchases=600, seed=3)
    rows = rows_of(entries)
    ledger_rows = sum(1 for e in entries if moves_money(e["entry_kind"]))

    async def scenario() -> None:
        connection = await _connect_migrated(database)
        try:
            assert await migrate(connection) == []  # already applied: nothing to do
            written = 0
            for start in range(0, len(rows), 97):  # uneven batches cut through accounts' histories
                written += (await write_batch(connection, rows[start : start + 97])).written
            assert written == ledger_rows
            expected = balances(Entry.of(entry) for entry in entries)
            assert await _balances(connection) == expected

            replay = await write_batch(connection, rows)
            assert (replay.written, replay.duplicates, replay.conflicts) == (0, ledger_rows, ())
            assert await _balances(connection) == expected
            assert await connection.fetchval("SELECT count(*) FROM ledger_entries") == ledger_rows
            not_earned = sum(1 for e in entries if e["entry_kind"] == "NOT_EARNED")
            assert await connection.fetchval("SELECT count(*) FROM purchases_not_earned") == not_earned
        finally:
            await connection.close()

    asyncio.run(scenario())


async def _temp_files(connection: asyncpg.Connection) -> int:
    """The temporary files Postgres has written for the connection's database, this connection's own counted."""
    await connection.execute("SELECT pg_stat_force_next_flush()")
    return int(await connection.fetchval("SELECT temp_files FROM pg_stat_database WHERE datname = current_database()"))


def test_a_sink_sized_batch_hands_its_triggers_the_inserted_rows_in_memory(postgres_url: str) -> None:
    """The ledger's statement triggers read the rows a COPY inserted from a transition table; at Postgres's default
    work_mem a batch of the sink's default size spilled it to a temporary file, read back by each trigger."""
    rows = rows_of(simulated_entries(purchases=4000, seed=5))
    assert len(rows) >= Settings.from_env({}).sink_batch_size

    async def write(url: str, work_mem: str | None) -> tuple[int, int]:
        connection = await _connect_migrated(url)
        try:
            await connection.execute(journal._SET_UP)
            journal._PREPARED.add(connection)
            if work_mem is not None:
                await connection.execute(f"SET work_mem = '{work_mem}'")
            before = await _temp_files(connection)
            result = await write_batch(connection, rows)
            return result.written, await _temp_files(connection) - before
        finally:
            await connection.close()

    written, spilled = asyncio.run(write(fresh_database(postgres_url), None))
    assert written > 9_000 and spilled == 0
    written_at_default, spilled_at_default = asyncio.run(write(fresh_database(postgres_url), "4MB"))
    assert written_at_default == written and spilled_at_default > 0  # what the setting spares


def test_same_entry_id_with_other_content_is_a_conflict_not_a_credit(database: str) -> None:
    entry = next(e for e in simulated_entries(purchases=20, seed=5) if e["entry_kind"] == "PENDING_CREATED")
    tampered = dict(entry, amount_minor=entry["amount_minor"] + 1_000)

    async def scenario() -> None:
        connection = await _connect_migrated(database)
        try:
            await write_batch(connection, rows_of([entry]))
            result = await write_batch(connection, rows_of([tampered]))
            assert (result.written, result.conflicts) == (0, (0,))
            amount = await connection.fetchval(
                "SELECT amount_minor FROM ledger_entries WHERE accrual_id = $1", entry["accrual_id"]
            )
            assert amount == entry["amount_minor"]
            # visible: recorded once for the operations view, however often it is redelivered
            await write_batch(connection, rows_of([tampered]))
            conflicts = await connection.fetch("SELECT * FROM ledger_conflicts")
            assert [(c["accrual_id"], c["held_kind"], c["arrived_amount_minor"]) for c in conflicts] == [
                (entry["accrual_id"], "PENDING_CREATED", entry["amount_minor"] + 1_000)
            ]
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_event_ids_are_the_accounts_the_same_id_on_two_accounts_is_two_entries(database: str) -> None:
    entry = next(e for e in simulated_entries(purchases=20, seed=5) if e["entry_kind"] == "PENDING_CREATED")
    other_account = dict(entry, account_id=entry["account_id"] + "-other")

    async def scenario() -> None:
        connection = await _connect_migrated(database)
        try:
            result = await write_batch(connection, rows_of([entry, other_account]))
            assert (result.written, result.conflicts) == (2, ())
            held = await connection.fetch(
                "SELECT account_id FROM ledger_entries WHERE accrual_id = $1 ORDER BY account_id", entry["accrual_id"]
            )
            assert [r["account_id"] for r in held] == [entry["account_id"], other_account["account_id"]]
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_conflicts_in_one_batch_and_across_not_earned_lines_are_never_written(database: str) -> None:
    entries = simulated_entries(purchases=40, seed=5)
    entry = next(e for e in entries if e["entry_kind"] == "PENDING_CREATED")
    not_earned = next(e for e in entries if e["entry_kind"] == "NOT_EARNED")
    twin = dict(entry, amount_minor=entry["amount_minor"] + 1)  # same id, same batch, other content
    credit_under_a_refusal = dict(entry, accrual_id=not_earned["accrual_id"], account_id=not_earned["account_id"])

    async def scenario() -> None:
        connection = await _connect_migrated(database)
        try:
            await write_batch(connection, rows_of([not_earned]))
            result = await write_batch(connection, rows_of([entry, twin, credit_under_a_refusal]))
            assert (result.written, result.conflicts) == (1, (1, 2))
            kinds = await connection.fetch("SELECT held_kind, arrived_kind FROM ledger_conflicts ORDER BY conflict_seq")
            assert sorted((k["held_kind"], k["arrived_kind"]) for k in kinds) == sorted(
                [("PENDING_CREATED", "PENDING_CREATED"), ("NOT_EARNED", "PENDING_CREATED")]
            )
            assert (
                await connection.fetchval(
                    "SELECT count(*) FROM ledger_entries WHERE account_id = $1 AND accrual_id = $2",
                    not_earned["account_id"],
                    not_earned["accrual_id"],
                )
                == 0
            )
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_the_same_lines_twice_in_one_batch_are_written_once_without_looking(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event redelivered makes the worker send its entries again, often into the same batch: the later copies
    are replays, left out in Python (``first_copies``), and the batch takes the fast path (no look-up), with the
    same result the verdict gives. An id again with other content still goes to the judged path."""
    entries = simulated_entries(purchases=40, seed=5)
    entry = next(e for e in entries if e["entry_kind"] == "PENDING_CREATED")
    not_earned = next(e for e in entries if e["entry_kind"] == "NOT_EARNED")
    other = next(e for e in entries if moves_money(e["entry_kind"]) and e["accrual_id"] != entry["accrual_id"])

    async def scenario() -> None:
        connection = await _connect_migrated(database)
        try:
            with monkeypatch.context() as patched:

                async def no_look_up(*_: Any) -> BatchResult:
                    raise AssertionError("the batch was judged")

                patched.setattr(journal, "_write_judged", no_look_up)
                result = await write_batch(connection, rows_of([entry, not_earned, entry, other, not_earned, entry]))
            assert (result.written, result.duplicates, result.conflicts) == (2, 2, ())
            counted = await connection.fetchval(
                "SELECT (SELECT count(*) FROM ledger_entries) + (SELECT count(*) FROM purchases_not_earned)"
            )
            assert counted == 3
            twin = dict(other, amount_minor=other["amount_minor"] + 1)
            fresh = next(
                e
                for e in entries
                if moves_money(e["entry_kind"]) and e["accrual_id"] not in {entry["accrual_id"], other["accrual_id"]}
            )
            judged = await write_batch(connection, rows_of([fresh, dict(fresh, amount_minor=fresh["amount_minor"] + 1), twin]))
            assert (judged.written, judged.conflicts) == (1, (1, 2))
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_the_sink_dead_letters_a_conflict_with_its_reason_and_counts_it(database: str) -> None:
    entry = next(e for e in simulated_entries(purchases=20, seed=5) if e["entry_kind"] == "PENDING_CREATED")
    tampered = dict(entry, amount_minor=entry["amount_minor"] + 7)
    messages = [
        ConsumerRecord(
            "cashback.accruals", 0, offset, 0, 0, entry["account_id"].encode(), CODEC.encode("accrual", e), None, 0, 0, []
        )
        for offset, e in enumerate([entry, tampered])
    ]

    class Producer:  # what the sink sends to the dead-letter topic
        def __init__(self) -> None:
            self.sent: list[tuple[str, bytes]] = []

        async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
            self.sent.append((topic, value))

    sink = Sink(Settings.from_env({"DATABASE_URL": database}), catalogue(), CODEC)
    producer = Producer()
    before = REGISTRY.get_sample_value("cashback_sink_entries_total", {"result": "conflict"}) or 0

    async def scenario() -> None:
        await (await _connect_migrated(database)).close()
        try:
            await sink.handle(messages, producer)  # type: ignore[arg-type]
        finally:
            await sink._drop_connection()

    asyncio.run(scenario())
    ((topic, value),) = producer.sent
    _, letter = CODEC.decode(value, expected_subject="dead_letter")
    assert topic == catalogue().dead_letters.name
    assert (letter["reason"], letter["source_offset"]) == ("ledger_conflict", 1)
    assert REGISTRY.get_sample_value("cashback_sink_entries_total", {"result": "conflict"}) == before + 1


def test_the_journal_is_append_only_and_its_invariants_hold_in_the_database(database: str) -> None:
    entry = next(e for e in simulated_entries(purchases=20, seed=5) if e["entry_kind"] == "PENDING_CREATED")

    async def scenario() -> None:
        connection = await _connect_migrated(database)
        try:
            await write_batch(connection, rows_of([entry]))
            for statement in (
                "UPDATE ledger_entries SET amount_minor = 1",
                "DELETE FROM ledger_entries",
                "TRUNCATE ledger_entries",
            ):
                with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="append-only"):
                    await connection.execute(statement)
            for broken in (dict(entry, amount_minor=0), dict(entry, debit_book="PENDING", credit_book="PENDING")):
                broken["accrual_id"] += "-broken"
                with pytest.raises(asyncpg.exceptions.CheckViolationError):
                    await write_batch(connection, rows_of([broken]))
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_an_expiry_is_written_folded_out_of_available_and_only_in_its_shape(database: str) -> None:
    """Migration 0015: the ledger takes AVAILABLE_EXPIRED (accrual v5), the balances fold it like the
    oracle, a replay writes nothing, and it is refused for cash or other books."""
    from stream.backtest import Replay
    from tests.factories import T0, card_event

    offer = {"offer_id": "pts", "reward_kind": "POINTS", "points_per_unit": 2, "currency": "EUR", "pending_days": 0}
    result = Replay(OfferBook.of([parse_offer({**offer, "available_expiry_days": 10})]))
    result.decide(card_event("CLEARING", 10_000, occurred_at=T0, account_id="expiring-1"))
    result.pass_time(T0 + timedelta(days=20))
    entries = [entry.record() for entry in result.entries.values()]
    assert [e["entry_kind"] for e in entries if moves_money(e["entry_kind"])][-1] == "AVAILABLE_EXPIRED"

    async def scenario() -> None:
        connection = await _connect_migrated(database)
        try:
            await write_batch(connection, rows_of(entries))
            expected = balances(Entry.of(entry) for entry in entries)
            assert expected[("expiring-1", "POINTS", "PTS")]["available_minor"] == 0
            assert await _balances(connection) == expected
            assert (await write_batch(connection, rows_of(entries))).written == 0
            expired = next(e for e in entries if e["entry_kind"] == "AVAILABLE_EXPIRED")
            for n, broken in enumerate(
                (dict(expired, reward_kind="CASH", currency="EUR"), dict(expired, debit_book="CONFIRMED"))
            ):
                broken["accrual_id"] += f"-broken-{n}"
                with pytest.raises(asyncpg.exceptions.CheckViolationError, match="available_expired_shape"):
                    await write_batch(connection, rows_of([broken]))
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_sink_blocks_and_retries_while_postgres_is_down() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="cashback-outage-"))
    data_dir.chmod(0o755)
    port = free_port()
    server = EmbeddedPostgres(data_dir / "pg", port=port, fast=True)
    try:
        url = server.start()
        asyncio.run(_migrate_and_close(url))
        server.stop()  # the outage begins

        entries = [e for e in simulated_entries(purchases=30, seed=9) if moves_money(e["entry_kind"])]
        settings = Settings.from_env({"DATABASE_URL": url})
        sink = Sink(settings, catalogue(), CODEC)
        retries_before = REGISTRY.get_sample_value("cashback_sink_retries_total") or 0

        async def scenario() -> BatchResult:
            task = asyncio.create_task(sink._with_retry(stage(rows_of(entries))))
            await asyncio.sleep(2.0)
            assert not task.done(), "the batch must wait for Postgres, not be skipped"
            assert (REGISTRY.get_sample_value("cashback_sink_retries_total") or 0) > retries_before
            await asyncio.to_thread(server.start)  # the outage ends
            result = await asyncio.wait_for(task, 60)
            await sink._drop_connection()
            return result

        result = asyncio.run(scenario())
        assert result.written == len(entries)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_history_sequence_migration_backfills_rows_in_recorded_order(database: str, tmp_path: Path) -> None:
    early = tmp_path / "early"
    early.mkdir()
    for name in ("0001_ledger.sql", "0002_budgets.sql"):
        shutil.copy(MIGRATIONS_DIR / name, early / name)
    entries = simulated_entries(purchases=30, seed=11)

    async def scenario() -> list[int]:
        connection = await asyncpg.connect(database)
        try:
            await migrate(connection, early)
            # Rows as the code of that time wrote them: the columns of 0001 only.
            await connection.executemany(
                "INSERT INTO ledger_entries (accrual_id, source_event_id, account_id, transaction_ref, entry_kind,"
                " debit_book, credit_book, amount_minor, currency, reward_kind, occurred_at, explanation, fingerprint)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, to_timestamp($11 / 1000.0), '{}', 'old')",
                [
                    (
                        e["accrual_id"],
                        e["source_event_id"],
                        e["account_id"],
                        e["transaction_ref"],
                        e["entry_kind"],
                        e["debit_book"],
                        e["credit_book"],
                        e["amount_minor"],
                        e["currency"],
                        e["reward_kind"],
                        e["occurred_at"],
                    )
                    for e in entries
                    if moves_money(e["entry_kind"]) and "DONATED" not in (e["debit_book"], e["credit_book"])  # 0001's books
                ],
            )
            assert "0003_history_sequence.sql" in await migrate(connection)
            sequence = [
                r["history_seq"] for r in await connection.fetch("SELECT history_seq FROM ledger_entries ORDER BY entry_seq")
            ]
            # New rows continue the sequence, and the journal is append-only again.
            more = [dict(e, accrual_id=e["accrual_id"] + "-later") for e in entries if e["entry_kind"] == "PENDING_CREATED"][:1]
            await write_batch(connection, rows_of(more))
            later = await connection.fetchval("SELECT max(history_seq) FROM ledger_entries")
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await connection.execute("UPDATE ledger_entries SET history_seq = 0")
            return sequence + [later]
        finally:
            await connection.close()

    sequence = asyncio.run(scenario())
    assert sequence[:-1] == sorted(sequence[:-1]) and len(set(sequence)) == len(sequence)
    assert sequence[-1] > max(sequence[:-1])


def test_the_databases_balance_arithmetic_is_the_oracles_for_every_kind_of_entry(database: str) -> None:
    """Migration 0007's functions (what the sink and the charity view sum) against
    stream.core.balances, entry kind by entry kind and book by book."""
    kinds = (
        "PENDING_CREATED",
        "PENDING_ADJUSTED",
        "PENDING_RELEASED",
        "CONFIRMED",
        "MADE_AVAILABLE",
        "EXPIRED",
        "CLAWED_BACK",
        "RECREDITED",
        "HELD",
        "HOLD_RELEASED",
        "HOLD_FORFEITED",
        "AVAILABLE_EXPIRED",
        "REDEEMED",
    )
    books = ("EXPENSE", "PENDING", "CONFIRMED", "AVAILABLE", "DONATED", "HELD", "REDEEMED")
    legs = [(kind, debit, credit, 1_234) for kind in kinds for debit in books for credit in books if debit != credit]

    async def in_sql() -> list[tuple[int, ...]]:
        connection = await _connect_migrated(database)
        try:
            rows = await connection.fetch(
                "SELECT book_movement('PENDING', d, c, a), book_movement('CONFIRMED', d, c, a),"
                " book_movement('AVAILABLE', d, c, a), earned_movement(k, a), clawed_back_movement(k, a),"
                " book_movement('DONATED', d, c, a), book_movement('HELD', d, c, a), book_movement('PAID_OUT', d, c, a),"
                " book_movement('REDEEMED', d, c, a)"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY AS t(k, d, c, a, n) ORDER BY n",
                *[list(column) for column in zip(*legs, strict=True)],
            )
            return [tuple(row) for row in rows]
        finally:
            await connection.close()

    expected = []
    for kind, debit, credit, amount in legs:
        entry = Entry(
            accrual_id="e#0",
            source_event_id="e",
            account_id="a",
            transaction_ref="t",
            entry_kind=kind,
            debit_book=debit,
            credit_book=credit,
            amount_minor=amount,
            currency="EUR",
            reward_kind="CASH",
            offer_id=None,
            rule_version=None,
            beneficiary_id=None,
            occurred_at=0,
            explanation=Explanation("", "", 0, "EUR", 0, "down", 0, False),
        )
        totals = balances([entry])[("a", "CASH", "EUR")]
        expected.append(tuple(totals[name] for name in BALANCE_FIELDS))
    assert asyncio.run(in_sql()) == expected
