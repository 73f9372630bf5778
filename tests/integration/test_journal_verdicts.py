"""The journal's verdicts, batch for batch what the statement before it gave (tests/integration/journal_oracle.py),
on batches that mix new entries with replays, conflicts with the ledger, conflicts across kinds (an entry under the
id of a purchase that earned nothing, and the reverse) and the same id twice in one batch, with the same content or
another; a batch that meets a row another writer committed under one of its ids after the look-up is written again,
and a balance that new entries would take below zero is refused as before."""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from stream.core.entries import moves_money
from stream.sink import staging_row
from stream.store import journal, staged_rows
from stream.store.journal import BatchResult, write_batch
from stream.store.migrations import MIGRATIONS_DIR, migrate, migration_files
from tests.integration.conftest import fresh_database
from tests.integration.journal_oracle import write_batch_before
from tests.integration.test_ledger import CODEC, simulated_entries

pytestmark = pytest.mark.integration

Write = Callable[[asyncpg.Connection, Sequence[tuple[Any, ...]]], Awaitable[BatchResult]]


def staged(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Staging rows at positions 1, 4, 7...: a position is the message's place in its fetch, not the row's."""
    rows = []
    for index, record in enumerate(records):
        raw = CODEC.encode("accrual", record)
        rows.append(staging_row(3 * index + 1, CODEC.decode(raw)[1], raw))
    return rows


def other_amount(entry: dict[str, Any]) -> dict[str, Any]:
    return dict(entry, amount_minor=entry["amount_minor"] + 1)


def mixed(seed: int, repeats: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(what the ledger holds before, a batch mixing every case of the module doc (without ``repeats``, no id twice
    in it), how many new entries it has)."""
    rng = random.Random(seed)
    # Reconciliation items take no part in the verdicts (their own table, ON CONFLICT DO NOTHING, and an id no entry
    # has): the statement before knew none. tests/integration/test_reconciliation.py writes them through both paths.
    entries = [e for e in simulated_entries(purchases=120, seed=seed) if e["entry_kind"] != "RECONCILIATION"]
    cut = len(entries) // 3
    before, new = entries[:cut], entries[cut:]
    held_entries = [e for e in before if e["entry_kind"] != "NOT_EARNED"]
    held_refusals = [e for e in before if e["entry_kind"] == "NOT_EARNED"]
    new_entries = [e for e in new if e["entry_kind"] != "NOT_EARNED"]
    new_refusals = [e for e in new if e["entry_kind"] == "NOT_EARNED"]
    assert len(held_refusals) >= 3 and len(new_entries) >= 8 and len(new_refusals) >= 2

    batch = list(new)  # in their order: the balances stay valid
    extras: list[dict[str, Any]] = []  # anywhere: each is a replay or a conflict, never written
    extras += rng.sample(before, 10)  # replays, refusals among them
    conflicting = [other_amount(e) for e in rng.sample(held_entries, 4)]
    extras += conflicting
    extras += [dict(n, explanation=dict(n["explanation"], detail="another detail")) for n in held_refusals[:2]]
    extras.append(dict(new_entries[0], accrual_id=held_refusals[2]["accrual_id"], account_id=held_refusals[2]["account_id"]))
    extras.append(dict(held_refusals[0], accrual_id=held_entries[0]["accrual_id"], account_id=held_entries[0]["account_id"]))
    if repeats:
        extras += [other_amount(held_entries[1]), held_entries[1]]  # another content first, then what the ledger holds
        extras.append(conflicting[0])  # the same conflict twice
    else:
        extras = list({(e["account_id"], e["accrual_id"]): e for e in extras}.values())
    for extra in extras:
        batch.insert(rng.randrange(len(batch) + 1), extra)
    if not repeats:
        return before, batch, len(new_entries)

    def after(original: dict[str, Any], *followers: dict[str, Any]) -> None:  # later in the batch than the original
        start = batch.index(original) + 1
        for follower in followers:
            start = rng.randrange(start, len(batch) + 1)
            batch.insert(start, follower)
            start += 1

    for entry in new_entries[1:4]:
        after(entry, dict(entry))  # the same entry twice
    for entry in new_entries[4:6]:
        after(entry, other_amount(entry))  # the same id twice, other content
    after(new_entries[6], other_amount(new_entries[6]), dict(new_entries[6]))  # A, B, then A again
    after(
        new_refusals[0], dict(new_entries[0], accrual_id=new_refusals[0]["accrual_id"], account_id=new_refusals[0]["account_id"])
    )
    after(new_entries[7], dict(new_refusals[1], accrual_id=new_entries[7]["accrual_id"], account_id=new_entries[7]["account_id"]))
    return before, batch, len(new_entries)


async def state(connection: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """The tables the journal writes, without what a sequence or the clock numbers (the statement before wrote the
    refusals of a batch and its conflicts in no set order)."""
    ledger = await connection.fetch("SELECT * FROM ledger_entries ORDER BY entry_seq")
    # offer_id: the holdout line's offer, which the statement before did not keep (its schema predates 0013)
    refusals = [
        {k: v for k, v in row.items() if k != "offer_id"} for row in await connection.fetch("SELECT * FROM purchases_not_earned")
    ]
    conflicts = await connection.fetch("SELECT * FROM ledger_conflicts")
    balances = await connection.fetch("SELECT * FROM balances ORDER BY account_id, reward_kind, currency")
    # paid_out_minor: the statement before's schema predates 0017 (these batches pay nothing out: 0 where it exists)
    assert all(row.get("paid_out_minor", 0) == 0 for row in balances)
    # sponsor_id: the statement before's schema predates 0016 (these entries are all bank-funded: NULL)
    drop = {
        "entry_seq",
        "history_seq",
        "recorded_at",
        "conflict_seq",
        "detected_at",
        "updated_at",
        "sponsor_id",
        "paid_out_minor",
        "redeemed_minor",  # the statement before's schema predates 0018 (nothing redeemed here)
        "line_kind",  # likewise: every line of these batches is a purchase that earned nothing
    }
    return {
        name: [tuple(v for k, v in row.items() if k not in drop) for row in rows]
        for name, rows in (("ledger", ledger), ("balances", balances))
    } | {
        name: sorted(tuple(v for k, v in row.items() if k not in drop) for row in rows)
        for name, rows in (("refusals", refusals), ("conflicts", conflicts))
    }


def run(database: str, write: Write, before: list[tuple[Any, ...]], parts: list[list[tuple[Any, ...]]], migrations: Path) -> Any:
    async def scenario() -> tuple[list[BatchResult], dict[str, list[tuple[Any, ...]]]]:
        connection = await asyncpg.connect(database)
        try:
            await migrate(connection, migrations)
            await write(connection, before)
            results = [await write(connection, part) for part in parts]
            return results, await state(connection)
        finally:
            await connection.close()

    return asyncio.run(scenario())


@pytest.fixture(scope="module")
def schema_before(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The migrations the statement before ran on: the ledger folded no balances itself (0010)."""
    directory = tmp_path_factory.mktemp("schema_before")
    for path in migration_files():
        if path.name < "0010":
            shutil.copy(path, directory / path.name)
    return directory


@pytest.mark.parametrize(("seed", "repeats"), [(21, True), (22, True), (23, True), (21, False), (22, False)])
def test_a_mixed_batch_gives_what_the_statement_before_gave(
    postgres_url: str, schema_before: Path, seed: int, repeats: bool
) -> None:
    before, batch, new_entries = mixed(seed, repeats)
    rows = staged(batch)
    cut = random.Random(seed).randrange(len(rows) // 4, 3 * len(rows) // 4)
    outcomes = []
    for parts in ([rows], [rows[:cut], rows[cut:]]):  # one batch, and the same rows in two
        now = run(fresh_database(postgres_url), write_batch, staged(before), parts, MIGRATIONS_DIR)
        then = run(fresh_database(postgres_url), write_batch_before, staged(before), parts, schema_before)
        assert now[0] == then[0]  # written, duplicates, conflicts by position, holds
        assert now[1] == then[1]  # ledger, refusals, balances, conflicts recorded
        outcomes.append(now)
    (result,), tables = outcomes[0]
    assert len(result.conflicts) >= (14 if repeats else 6) and result.duplicates >= 3  # the cases above, some by chance
    assert result.written == new_entries  # each new entry once, none lost among the replays and conflicts
    held_kinds = {c[3] for c in tables["conflicts"]}
    assert "NOT_EARNED" in held_kinds and len(held_kinds) >= 2


class Interfering(asyncpg.Connection):  # type: ignore[misc]
    """Before its first COPY, another connection writes ``ahead`` and commits: what a second sink does."""

    ahead: Sequence[tuple[Any, ...]] = ()
    url = ""

    async def copy_records_to_table(self, *args: Any, **kwargs: Any) -> Any:
        if self.ahead:
            other = await asyncpg.connect(self.url)
            try:
                await write_batch(other, self.ahead)
            finally:
                await other.close()
            type(self).ahead = ()
        return await super().copy_records_to_table(*args, **kwargs)


def test_a_row_committed_by_another_writer_after_the_look_up_makes_the_batch_look_again(database: str) -> None:
    entries = [e for e in simulated_entries(purchases=30, seed=24) if e["entry_kind"] == "PENDING_CREATED"]
    rows = staged(entries)
    Interfering.ahead, Interfering.url = rows[2:4], database

    async def scenario() -> tuple[BatchResult, int, int]:
        connection = await asyncpg.connect(database, connection_class=Interfering)
        try:
            await migrate(connection)
            result = await write_batch(connection, rows)
            pending = await connection.fetchval("SELECT sum(pending_minor) FROM balances")
            return result, await connection.fetchval("SELECT count(*) FROM ledger_entries"), pending
        finally:
            await connection.close()

    result, ledger, pending = asyncio.run(scenario())
    assert (result.written, result.duplicates, result.conflicts) == (len(rows) - 2, 2, ())
    assert ledger == len(rows) and pending == sum(e["amount_minor"] for e in entries)  # each credited once


def test_new_entries_that_would_take_a_balance_below_zero_are_refused(database: str) -> None:
    entries = simulated_entries(purchases=40, seed=25)
    release = next(e for e in entries if e["entry_kind"] == "PENDING_RELEASED")  # its creation never arrives

    async def scenario() -> None:
        connection = await asyncpg.connect(database)
        try:
            await migrate(connection)
            with pytest.raises(asyncpg.exceptions.CheckViolationError, match="balances"):
                await write_batch(connection, staged([release]))
            assert await connection.fetchval("SELECT count(*) FROM ledger_entries") == 0
            assert await connection.fetchval("SELECT count(*) FROM balances") == 0
        finally:
            await connection.close()

    asyncio.run(scenario())


@pytest.fixture()
def database(postgres_url: str) -> str:
    return fresh_database(postgres_url)


def test_a_batch_is_written_without_looking_until_ids_are_held_and_again_once_none_are(database: str) -> None:
    entries = [e for e in simulated_entries(purchases=60, seed=26) if moves_money(e["entry_kind"])]
    first, second, third = staged(entries[:40]), staged(entries[40:80]), staged(entries[80:])

    async def scenario() -> list[tuple[int, int, bool]]:
        seen = []
        writer = await asyncpg.connect(database)  # the partitions' owner before a rebalance
        try:
            await migrate(writer)
            result = await write_batch(writer, first)
            seen.append((result.written, result.duplicates, writer in journal._CAREFUL))
        finally:
            await writer.close()
        connection = await asyncpg.connect(database)
        try:
            # new, a replay of what the other connection wrote (its ids are held: judged), new (still looked up)
            for rows in (second, first, third):
                result = await write_batch(connection, rows)
                seen.append((result.written, result.duplicates, connection in journal._CAREFUL))
            return seen
        finally:
            await connection.close()

    assert asyncio.run(scenario()) == [(40, 0, False), (40, 0, False), (0, 40, True), (len(third), 0, False)]


def test_the_lines_the_last_batch_committed_are_left_out_of_the_next_without_looking(database: str) -> None:
    """An event redelivered across a fetch's end: its lines, a few offsets after their first copies, open the next
    batch. The connection remembers the lines its last batch committed, and leaves the same lines (same account, id
    and fingerprint) out of the next one, counted as replays, as the verdict would: the batch is written without
    looking instead of failing on the ledger's keys and being judged. A line under one of those ids with other
    content is still a conflict, and what is remembered goes with the connection: a line another connection
    committed is found by looking."""
    lines = simulated_entries(purchases=60, seed=29)
    entries = [e for e in lines if moves_money(e["entry_kind"])]
    others = [e for e in lines if not moves_money(e["entry_kind"])]  # purchases that earned nothing, items
    assert len(entries) > 70 and {"NOT_EARNED", "RECONCILIATION"} <= {e["entry_kind"] for e in others}
    first = staged(entries[:40] + others[:10])
    again = staged(entries[35:40] + others[8:10] + entries[40:60])  # 5 entries and 2 other lines of the last batch
    changed = staged([other_amount(entries[50])] + entries[58:60] + entries[60:70])
    older = staged(entries[:3] + entries[70:])  # lines of the batch before the last, on a new connection

    async def scenario() -> list[tuple[int, int, tuple[int, ...], bool]]:
        connection = await asyncpg.connect(database)
        seen = []
        try:
            await migrate(connection)
            for rows in (first, again, changed):
                result = await write_batch(connection, rows)
                seen.append((result.written, result.duplicates, result.conflicts, connection in journal._CAREFUL))
        finally:
            await connection.close()
        connection = await asyncpg.connect(database)
        try:
            result = await write_batch(connection, older)
            seen.append((result.written, result.duplicates, result.conflicts, connection in journal._CAREFUL))
            held = await connection.fetchval("SELECT count(*) FROM ledger_entries")
            twice = await connection.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM ledger_entries GROUP BY account_id, accrual_id HAVING count(*) > 1) t"
            )
            seen.append((held, twice, (), False))
        finally:
            await connection.close()
        return seen

    assert asyncio.run(scenario()) == [
        (40, 0, (), False),
        (20, 5, (), False),  # the last batch's lines left out: no look-up, so never careful
        (10, 2, (1,), True),  # entries[50] with another amount: a conflict (position 1), found by looking
        (len(entries) - 70, 3, (), True),  # committed two batches ago, on another connection: found by looking
        (len(entries), 0, (), False),
    ]


def test_lines_committed_batches_back_are_left_out_until_the_bounded_memory_forgets_them(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies whose first copies came batches back (one or two offsets further in their partition, but read after
    the other partitions' records when a fetch ended between them): the connection remembers the lines of its last
    batches, between ``MEMORY_LINES`` and twice as many, and leaves them out without looking; a line it has
    forgotten is found by looking, never left out on a guess, and the ledger holds each line once either way."""
    monkeypatch.setattr(staged_rows, "MEMORY_LINES", 30)
    entries = [e for e in simulated_entries(purchases=80, seed=31) if moves_money(e["entry_kind"])]
    assert len(entries) >= 90
    batches = [
        staged(entries[:20]),
        staged(entries[20:40]),  # the memory holds 40 lines: they become its older half
        staged(entries[:5] + entries[40:50]),  # 5 lines of two batches back: remembered, left out without looking
        staged(entries[50:80]),  # the newer half fills again: the first two batches are forgotten
        staged(entries[:5] + entries[80:90]),  # the same 5 lines: forgotten, so looked up, found held, replays
    ]

    async def scenario() -> tuple[list[tuple[int, int, bool]], int, int]:
        connection = await asyncpg.connect(database)
        seen = []
        try:
            await migrate(connection)
            for rows in batches:
                result = await write_batch(connection, rows)
                seen.append((result.written, result.duplicates, connection in journal._CAREFUL))
            held = await connection.fetchval("SELECT count(*) FROM ledger_entries")
            twice = await connection.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM ledger_entries GROUP BY account_id, accrual_id HAVING count(*) > 1) t"
            )
            return seen, held, twice
        finally:
            await connection.close()

    seen, held, twice = asyncio.run(scenario())
    assert seen == [(20, 0, False), (20, 0, False), (10, 5, False), (30, 0, False), (10, 5, True)]
    assert (held, twice) == (90, 0)


def test_an_id_is_held_by_one_kind_of_line_whoever_writes_it(database: str) -> None:
    entries = simulated_entries(purchases=40, seed=27)
    entry = next(e for e in entries if e["entry_kind"] == "PENDING_CREATED")
    refusal = next(e for e in entries if e["entry_kind"] == "NOT_EARNED")

    async def scenario() -> list[str | None]:
        connection = await asyncpg.connect(database)
        names = []
        try:
            await migrate(connection)
            await write_batch(connection, staged([entry, refusal]))
            with pytest.raises(asyncpg.exceptions.UniqueViolationError) as refused:  # a refusal under the entry's id
                await connection.execute(
                    "INSERT INTO purchases_not_earned (accrual_id, source_event_id, account_id, transaction_ref, reason,"
                    " detail, basis_minor, basis_currency, occurred_at) VALUES ($1, $2, $3, $4, 'declined', 'd', 0, 'EUR', now())",
                    entry["accrual_id"],
                    entry["source_event_id"],
                    entry["account_id"],
                    entry["transaction_ref"],
                )
            names.append(refused.value.constraint_name)
            under_refusal = staged([dict(entry, accrual_id=refusal["accrual_id"], account_id=refusal["account_id"])])
            with pytest.raises(asyncpg.exceptions.UniqueViolationError) as refused:  # an entry under the refusal's id
                await connection.copy_records_to_table(
                    "ledger_entries", records=[under_refusal[0][1:]], columns=staged_rows.LEDGER_COLUMNS
                )
            names.append(refused.value.constraint_name)
        finally:
            await connection.close()
        return names

    assert asyncio.run(scenario()) == ["ledger_ids_once", "ledger_ids_once"]


def test_the_lines_that_move_no_money_are_the_same_rows_copied_or_inserted(postgres_url: str) -> None:
    """A batch written without looking copies its purchases that earned nothing, refused redemptions, wallet marks and
    reconciliation items in (``stage``: the columns read out of the explanation in Python); judged, the same lines
    go in by ``INSERT``, which reads them in Postgres. Both give the same rows."""
    entries = simulated_entries(purchases=80, seed=28)
    refusal = next(e for e in entries if e["entry_kind"] == "NOT_EARNED")
    made = [
        dict(refusal, accrual_id=f"{refusal['accrual_id']}-offer", offer_id="offer-about"),  # a holdout line names one
        dict(refusal, accrual_id=f"{refusal['accrual_id']}-redemption", entry_kind="REDEMPTION_REFUSED"),
        dict(refusal, accrual_id=f"{refusal['accrual_id']}-mark", entry_kind="WALLET_MARK", currency="XXX"),
    ]
    batch = staged(entries + made)
    assert {"NOT_EARNED", "RECONCILIATION", "REDEMPTION_REFUSED", "WALLET_MARK"} <= {r[staged_rows.KIND] for r in batch}

    async def written(url: str, judged: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]], BatchResult]:
        connection = await asyncpg.connect(url)
        try:
            await migrate(connection)
            if judged:
                journal._CAREFUL.add(connection)
            result = await write_batch(connection, batch)
            assert (connection in journal._CAREFUL) is False  # nothing was held: the next batch goes without looking
            lines = await connection.fetch("SELECT * FROM purchases_not_earned ORDER BY accrual_id")
            items = await connection.fetch("SELECT * FROM reconciliation_items ORDER BY account_id, item_id")
            skipped = {"recorded_at", "history_seq", "item_seq"}
            return (
                [{k: v for k, v in row.items() if k not in skipped} for row in lines],
                [{k: v for k, v in row.items() if k not in skipped} for row in items],
                result,
            )
        finally:
            await connection.close()

    copied = asyncio.run(written(fresh_database(postgres_url), judged=False))
    inserted = asyncio.run(written(fresh_database(postgres_url), judged=True))
    assert copied == inserted
    lines, items, result = copied
    assert {row["line_kind"] for row in lines} == {"NOT_EARNED", "REDEMPTION_REFUSED", "WALLET_MARK"}
    assert any(row["offer_id"] == "offer-about" for row in lines) and items
    assert result.items == inserted[2].items and len(result.items) == len(items)
