"""The ledger's erasure (migration 0008, ``stream.store.erasure``) on a real Postgres: one function,
``erase_account``, moves every row of an account to a random pseudonym with its amounts kept, so
every sum is unchanged, and logs it without the account id; every other UPDATE, DELETE or TRUNCATE
is still refused, even by the superuser and with triggers of origin switched off; and no row of an
erased account is written again. The entries are written as the sink writes them (``write_batch``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from schemas.codec import Codec
from stream.sink import staging_row
from stream.store import erasure
from stream.store.journal import write_batch
from stream.store.migrations import migrate
from tests.integration.conftest import fresh_database

pytestmark = pytest.mark.integration

CODEC = Codec()
ERASED, KEPT = "acct-erased-1", "acct-kept-2"
AT = int(datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp() * 1000)
SUMS = {
    "books": "SELECT currency::text, debit_book, credit_book, entry_kind, reward_kind, sum(amount_minor), count(*)"
    " FROM ledger_entries GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
    "balances": "SELECT reward_kind, currency::text, sum(pending_minor), sum(confirmed_minor), sum(available_minor),"
    " sum(lifetime_earned_minor), sum(clawed_back_minor), sum(donated_minor), count(*) FROM balances GROUP BY 1, 2 ORDER BY 1, 2",
    "not_earned": "SELECT reason, basis_currency::text, sum(basis_minor), count(*) FROM purchases_not_earned GROUP BY 1, 2 ORDER BY 1, 2",
    "charities": "SELECT * FROM charity_donations ORDER BY charity_id, currency",
    "budgets": "SELECT offer_id, sum(delta_minor), count(*) FROM budget_movements GROUP BY 1 ORDER BY 1",
}
TABLES = ("ledger_entries", "purchases_not_earned", "balances", "ledger_conflicts", "budget_movements", "erasure_log")


def entry(account: str, n: int, kind: str, debit: str, credit: str, amount: int, **extra: Any) -> dict[str, Any]:
    """An accrual record as the matcher sends it; its ids and texts name the account, as real ones can."""
    event_id = f"{account}-evt-{n}"
    return {
        "accrual_id": f"{event_id}#0",
        "source_event_id": event_id,
        "account_id": account,
        "transaction_ref": f"{account}-txn-{n // 3}",
        "entry_kind": kind,
        "debit_book": debit,
        "credit_book": credit,
        "amount_minor": amount,
        "currency": extra.pop("currency", "EUR"),
        "reward_kind": extra.pop("reward_kind", "CASH"),
        "offer_id": "grocery-5",
        "rule_version": 1,
        "beneficiary_id": extra.pop("beneficiary_id", None),
        "occurred_at": AT + n * 60_000,
        "explanation": {
            "reason": extra.pop("reason", "earned"),
            "detail": extra.pop("detail", f"5.00% of {amount * 20 / 100:.2f} EUR"),
            "basis_minor": amount * 20,
            "basis_currency": "EUR",
            "rate_bps": 500,
            "rounding": "down",
            "carried_remainder": 0,
            "force_post": False,
        },
    }


def story(account: str) -> list[dict[str, Any]]:
    return [
        entry(account, 0, "PENDING_CREATED", "EXPENSE", "PENDING", 500),
        entry(account, 1, "CONFIRMED", "PENDING", "CONFIRMED", 400),
        entry(account, 2, "PENDING_RELEASED", "PENDING", "EXPENSE", 100),
        entry(account, 3, "MADE_AVAILABLE", "CONFIRMED", "AVAILABLE", 400),
        entry(account, 4, "CONFIRMED", "EXPENSE", "CONFIRMED", 250, currency="JPY"),
        entry(account, 5, "CONFIRMED", "EXPENSE", "CONFIRMED", 90, reward_kind="CHARITY", beneficiary_id="red-cross"),
        entry(account, 6, "MADE_AVAILABLE", "CONFIRMED", "DONATED", 90, reward_kind="CHARITY", beneficiary_id="red-cross"),
        entry(account, 7, "NOT_EARNED", "NONE", "NONE", 0, reason="not_in_segment", detail="account segments: vip"),
    ]


def rows(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    out = []
    for position, record in enumerate(entries):
        raw = CODEC.encode("accrual", record)
        out.append(staging_row(position, CODEC.decode(raw)[1], raw))
    return out


async def ledger(url: str) -> asyncpg.Connection:
    connection = await asyncpg.connect(url)
    await migrate(connection)
    for account in (ERASED, KEPT):
        await write_batch(connection, rows(story(account)))
        tampered = dict(story(account)[0], amount_minor=999)  # a conflict recorded for the account
        await write_batch(connection, rows([tampered]))
        await connection.execute(
            "INSERT INTO offer_budgets (offer_id, currency, budget_minor, used_minor) VALUES ('grocery-5', 'EUR', 100000, 0)"
            " ON CONFLICT DO NOTHING"
        )
        await connection.execute(
            "INSERT INTO budget_movements (event_id, offer_id, delta_minor) VALUES ($1, 'grocery-5', 500)",
            f"{len(account)}:{account}/{account}-evt-0",  # stream.store.budgets.movement_id
        )
    return connection


async def sums(connection: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {name: [tuple(r) for r in await connection.fetch(query)] for name, query in SUMS.items()}


async def naming(connection: asyncpg.Connection, text: str) -> dict[str, int]:
    """Rows of each table whose text (any column) contains ``text``."""
    return {
        table: await connection.fetchval(f"SELECT count(*) FROM {table} t WHERE t::text LIKE '%' || $1 || '%'", text)
        for table in TABLES
    }


async def rows_of_kept(connection: asyncpg.Connection) -> list[tuple[Any, ...]]:
    found = []
    for table in TABLES[:-1]:
        found += [tuple(r) for r in await connection.fetch(f"SELECT * FROM {table} t WHERE t::text LIKE '%' || $1 || '%'", KEPT)]
    return sorted(found, key=repr)


class RolledBack(Exception):
    """Raised to roll a transaction back."""


@pytest.fixture()
def database(postgres_url: str) -> str:
    return fresh_database(postgres_url)


def test_erasure_moves_every_row_to_a_pseudonym_keeps_every_sum_and_logs_no_account_id(database: str) -> None:
    async def scenario() -> None:
        connection = await ledger(database)
        try:
            before, kept = await sums(connection), await rows_of_kept(connection)
            assert all(count for table, count in (await naming(connection, ERASED)).items() if table != "erasure_log")

            logged = await erasure.erase(connection, ERASED, "DSR-2026-0042", "dpo-operator")

            assert await naming(connection, ERASED) == dict.fromkeys(TABLES, 0)  # in no column of any row
            assert await sums(connection) == before  # every total per book, currency, kind; balances; charities
            assert await rows_of_kept(connection) == kept  # the other account, row for row
            pseudonym = logged.pseudonym
            assert pseudonym is not None and pseudonym.startswith("erased-") and len(pseudonym) == 39
            assert (
                logged.ledger_rows,
                logged.not_earned_rows,
                logged.balance_rows,
                logged.conflict_rows,
                logged.budget_rows,
            ) == (
                7,
                1,
                3,
                1,
                1,
            )
            moved = await erasure.holdings(connection, pseudonym)
            assert len(moved.history) == 8 and {line["explanation"]["detail"] for line in moved.history} == {"erased"}
            assert len({line["transaction_ref"] for line in moved.history}) == 3  # one purchase's lines still together
            assert (await erasure.holdings(connection, ERASED)).empty()
            log = await connection.fetchrow("SELECT * FROM erasure_log")
            assert (log["reason"], log["erased_by"], log["database_user"], log["pseudonym"]) == (
                "DSR-2026-0042",
                "dpo-operator",
                "postgres",
                pseudonym,
            )
            assert await erasure.is_erased(connection, ERASED) and not await erasure.is_erased(connection, KEPT)
            # Asked again: nothing left to move, logged all the same (a repeated request).
            again = await erasure.erase(connection, ERASED, "DSR-2026-0042 (repeated)", "dpo-operator")
            assert again.pseudonym is None and again.ledger_rows == 0
            assert await sums(connection) == before
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_no_other_update_or_delete_passes_even_as_superuser(database: str) -> None:
    async def scenario() -> None:
        connection = await ledger(database)
        refused = asyncpg.exceptions.InsufficientPrivilegeError
        try:
            assert await connection.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            for replica in (False, True):  # triggers of origin off: ours are ENABLE ALWAYS
                await connection.execute(f"SET session_replication_role = {'replica' if replica else 'origin'}")
                for statement in (
                    "UPDATE ledger_entries SET amount_minor = 1",
                    f"UPDATE ledger_entries SET account_id = '{KEPT}' WHERE account_id = '{ERASED}'",
                    "UPDATE ledger_entries SET account_id = 'x' WHERE false",
                    "UPDATE purchases_not_earned SET detail = 'x'",
                    "DELETE FROM ledger_entries",
                    "DELETE FROM purchases_not_earned",
                    "TRUNCATE ledger_entries",
                    "TRUNCATE purchases_not_earned",
                ):
                    with pytest.raises(refused, match="append-only"):
                        await connection.execute(statement)
            await connection.execute("SET session_replication_role = origin")

            # The setting alone proves nothing: it must name this transaction's erasure log row.
            other = await erasure.erase(connection, "acct-someone-else", "DSR-1", "dpo")
            with pytest.raises(refused, match="append-only"):
                async with connection.transaction():
                    await connection.execute("SELECT set_config('cashback.erasure_id', $1, true)", str(other.erasure_id))
                    await connection.execute(f"UPDATE ledger_entries SET account_id = 'x' WHERE account_id = '{ERASED}'")
            # A log row of its own: its pseudonym is stamped (not chosen), and no amount can change.
            with pytest.raises(RolledBack):
                async with connection.transaction():
                    forged = await connection.fetchrow(
                        "INSERT INTO erasure_log (erasure_id, erased_at, erased_by, database_user, reason, pseudonym, ledger_rows,"
                        " not_earned_rows, balance_rows, conflict_rows, budget_rows, transaction_id)"
                        f" VALUES (gen_random_uuid(), now(), 'x', 'x', 'x', 'erased-{'0' * 32}', 1, 0, 0, 0, 0, '1') RETURNING *"
                    )
                    assert forged["pseudonym"] != "erased-" + "0" * 32
                    await connection.execute("SELECT set_config('cashback.erasure_id', $1, true)", str(forged["erasure_id"]))
                    for statement in (
                        f"UPDATE ledger_entries SET account_id = '{KEPT}' WHERE account_id = '{ERASED}'",  # to another customer
                        f"UPDATE ledger_entries SET account_id = '{forged['pseudonym']}', amount_minor = amount_minor + 1"
                        f" WHERE account_id = '{ERASED}'",
                        f"UPDATE purchases_not_earned SET account_id = '{forged['pseudonym']}', basis_minor = basis_minor + 1"
                        f" WHERE account_id = '{ERASED}'",
                    ):
                        with pytest.raises(refused, match="append-only"):
                            async with connection.transaction():  # a savepoint: the next statement may run
                                await connection.execute(statement)
                    raise RolledBack
            assert await connection.fetchval("SELECT count(*) FROM erasure_log") == 1
            for statement in ("UPDATE erasure_log SET reason = 'x'", "DELETE FROM erasure_log", "DELETE FROM erased_accounts"):
                with pytest.raises(refused, match="append-only"):
                    await connection.execute(statement)
            with pytest.raises(asyncpg.exceptions.InvalidParameterValueError):
                await erasure.erase(connection, "erased-" + "1" * 32, "DSR-1", "dpo")  # a pseudonym is no account
            with pytest.raises(asyncpg.exceptions.InvalidParameterValueError):
                await erasure.erase(connection, ERASED, " ", "dpo")
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_an_erased_account_never_gets_a_row_again_and_an_erasure_waits_for_a_writer(database: str) -> None:
    async def scenario() -> None:
        connection, writer = await ledger(database), await asyncpg.connect(database)
        try:
            # A sink transaction still open with a row of the account: the erasure waits for it,
            # then moves that row too.
            late = entry(ERASED, 30, "PENDING_CREATED", "EXPENSE", "PENDING", 700)
            transaction = writer.transaction()
            await transaction.start()
            await writer.execute(
                "INSERT INTO ledger_entries (accrual_id, source_event_id, account_id, transaction_ref, entry_kind, debit_book,"
                " credit_book, amount_minor, currency, reward_kind, occurred_at, explanation, fingerprint)"
                " VALUES ($1, $2, $3, $4, 'PENDING_CREATED', 'EXPENSE', 'PENDING', 700, 'EUR', 'CASH', now(), '{}', 'f')",
                late["accrual_id"],
                late["source_event_id"],
                ERASED,
                late["transaction_ref"],
            )
            erasing = asyncio.create_task(erasure.erase(connection, ERASED, "DSR-7", "dpo"))
            await asyncio.sleep(0.5)
            assert not erasing.done(), "the erasure must wait for the writer's transaction"
            await transaction.commit()
            logged = await asyncio.wait_for(erasing, 30)
            assert logged.ledger_rows == 8
            # From now on the ledger refuses the account's rows, as the sink writes them (it
            # dead-letters a refused row: ledger_rejected).
            for record in (late, story(ERASED)[7]):
                with pytest.raises(asyncpg.exceptions.CheckViolationError, match="erased"):
                    await write_batch(writer, rows([dict(record, accrual_id=record["accrual_id"] + "-again")]))
            assert (await write_batch(writer, rows([entry(KEPT, 40, "PENDING_CREATED", "EXPENSE", "PENDING", 10)]))).written == 1
        finally:
            await writer.close()
            await connection.close()

    asyncio.run(scenario())
