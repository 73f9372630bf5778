"""GDPR export and erasure end to end (``stream.gdpr``), on the real broker and Postgres with a
worker, a sink and the API running: two accounts with a profile, activations and purchases reach
the ledger; one is exported (API and command line), then erased by the command. Its profile and
activation topics then end in tombstones for it, and so does every key of its state on the
worker's changelog; its ledger rows name a pseudonym and never the account, every sum over the
ledger is unchanged, the other account is untouched, the ledger still refuses any other UPDATE or
DELETE (as superuser), the erasure log has its row, the API answers 404, and a late card event of
the account is dead-lettered, never written. The other account is then erased by the API route."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.codec import Codec
from stream.auth import ACCOUNTS_READ
from tests.factories import card_record
from tests.integration.conftest import REPO_ROOT, Processes, api_headers, rows_of, running_pipeline, wait_until
from tests.integration.test_end_to_end import publish_records

pytestmark = pytest.mark.integration

ERASED, KEPT = "acct-gdpr-a", "acct-gdpr-b"
CODEC = Codec()
TABLES = ("ledger_entries", "purchases_not_earned", "balances", "ledger_conflicts", "budget_movements", "erasure_log")
TOTALS = (
    "SELECT currency::text, debit_book, credit_book, entry_kind, sum(amount_minor), count(*) FROM ledger_entries"
    " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
)
BALANCE_TOTALS = (
    "SELECT reward_kind, currency::text, sum(pending_minor), sum(confirmed_minor), sum(available_minor),"
    " sum(lifetime_earned_minor), count(*) FROM balances GROUP BY 1, 2 ORDER BY 1, 2"
)


@pytest.fixture(scope="module")
def gdpr_pipeline(
    request: pytest.FixtureRequest, kafka_bootstrap: str, postgres_url: str, work_dir: Path
) -> Iterator[tuple[Processes, str]]:
    with running_pipeline(
        request, kafka_bootstrap, postgres_url, work_dir, "gdpr", REPO_ROOT / "tests" / "integration" / "offers.yaml"
    ) as running:
        yield running


def now() -> datetime:
    """Card events happen now: none of their return windows or expiries falls due during the test."""
    return datetime.now(UTC)


def query(env: dict[str, str], sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return rows_of(env["DATABASE_URL"], sql, *args)


def naming(env: dict[str, str], text: str, tables: tuple[str, ...] = TABLES) -> dict[str, int]:
    """Rows of each ledger table whose text (any column) contains ``text``."""
    return {
        table: query(env, f"SELECT count(*) FROM {table} t WHERE t::text LIKE '%' || $1 || '%'", text)[0][0] for table in tables
    }


def every_table(env: dict[str, str]) -> tuple[str, ...]:
    """Every table of the database, the ones added after this test was written too."""
    sql = "SELECT tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
    return tuple(row[0] for row in query(env, sql))


def read_to_end(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of every partition of ``topic``, (key, value), in each partition's order."""

    async def read() -> list[tuple[bytes | None, bytes | None]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (description,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        partitions = [TopicPartition(topic, p["partition"]) for p in description["partitions"]]
        assert partitions, f"no topic {topic}: {description}"
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            end = await consumer.end_offsets(partitions)
            records: list[tuple[bytes | None, bytes | None]] = []
            while behind := [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
                for batch in (await consumer.getmany(*behind, timeout_ms=1000)).values():
                    records += [(r.key, r.value) for r in batch]
            return records
        finally:
            await consumer.stop()

    return asyncio.run(read())


def last_values(records: list[tuple[bytes | None, bytes | None]]) -> dict[bytes | None, bytes | None]:
    return dict(records)  # the last record of each key wins, as compaction keeps it


def state_keys_of(account: str, changelog: dict[bytes | None, bytes | None]) -> dict[str, bytes | None]:
    keys = {json.loads(key or b"null"): value for key, value in changelog.items()}
    return {key: value for key, value in keys.items() if isinstance(key, str) and key.split("\x1f")[0] == account}


def rows_naming(env: dict[str, str], text: str) -> list[str]:
    """Every row of the ledger's tables naming ``text``, as text."""
    sql = "SELECT t::text FROM {} t WHERE t::text LIKE '%' || $1 || '%'"
    return sorted(row[0] for table in TABLES[:-1] for row in query(env, sql.format(table), text))


def ledger_lines(env: dict[str, str], account: str) -> int:
    return query(
        env,
        "SELECT (SELECT count(*) FROM ledger_entries WHERE account_id = $1) + (SELECT count(*) FROM purchases_not_earned"
        " WHERE account_id = $1)",
        account,
    )[0][0]


def test_an_account_is_exported_then_erased_everywhere(gdpr_pipeline: tuple[Processes, str]) -> None:
    processes, base_url = gdpr_pipeline
    env, bootstrap = processes.env, processes.env["KAFKA_BOOTSTRAP_SERVERS"]
    ops = api_headers()
    processes.cli("accounts", "segments", ERASED, "vip", "new")
    processes.cli("accounts", "activate", ERASED, "grocery-5")
    processes.cli("accounts", "activate", ERASED, "dining-3-now")
    processes.cli("accounts", "deactivate", ERASED, "dining-3-now")
    processes.cli("accounts", "segments", KEPT, "vip")
    processes.cli("accounts", "activate", KEPT, "grocery-5")
    # Each account: a purchase authorised, then cleared (published after the authorisation was
    # decided: the two topics have no common order), and a declined one (a NOT_EARNED line).
    for account, amount in ((ERASED, 10_000), (KEPT, 8_000)):
        ref = f"{account}-ref"
        publish_records(env, [card_record("AUTHORIZATION", amount, account_id=account, transaction_ref=ref, occurred_at=now())])
        wait_until(lambda a=account: ledger_lines(env, a) == 1, 60, f"the authorisation of {account} in the ledger")
        publish_records(
            env,
            [
                card_record("CLEARING", amount, account_id=account, transaction_ref=ref, occurred_at=now()),
                card_record(
                    "AUTHORIZATION", 5_000, account_id=account, transaction_ref=f"{ref}-2", response_code="51", occurred_at=now()
                ),
            ],
        )
        wait_until(lambda a=account: ledger_lines(env, a) == 3, 60, f"the clearing and the decline of {account} in the ledger")

    # --- the export: the API route (operations only) and the command line say the same ---------
    response = httpx.get(f"{base_url}/v1/operations/accounts/{ERASED}/export", headers=ops, timeout=30)
    assert response.status_code == 200, response.text
    exported = response.json()
    assert exported["erasure"] == {"erased": False}
    ((line,),) = [exported["balances"]]
    assert (line["confirmed_minor"], line["pending_minor"], line["currency"]) == (500, 0, "EUR")
    # Every book the balances route gives, the export gives too (it once left out held and paid out).
    route = httpx.get(f"{base_url}/v1/accounts/{ERASED}/balances", headers=ops, timeout=10)
    assert route.status_code == 200, route.text
    assert exported["balances"] == route.json()["balances"]
    assert {"held_minor", "paid_out_minor"} <= set(line)
    assert [h["entry_kind"] for h in exported["history"]] == ["PENDING_CREATED", "CONFIRMED", "NOT_EARNED"]
    assert all(h["explanation"]["detail"] for h in exported["history"])
    assert exported["profile"]["segments"] == ["new", "vip"]
    assert [(a["offer_id"], a["active"]) for a in exported["activations"]] == [("dining-3-now", False), ("grocery-5", True)]
    from_cli = json.loads(processes.cli("gdpr", "export", ERASED))
    assert {k: v for k, v in from_cli.items() if k != "exported_at"} == {k: v for k, v in exported.items() if k != "exported_at"}
    reader = api_headers([ACCOUNTS_READ], [ERASED])
    assert httpx.get(f"{base_url}/v1/operations/accounts/{ERASED}/export", headers=reader, timeout=10).status_code == 403
    assert httpx.get(f"{base_url}/v1/operations/accounts/acct-never-seen/export", headers=ops, timeout=10).status_code == 404

    # --- the erasure, by the command ----------------------------------------------------------
    totals, balance_totals = query(env, TOTALS), query(env, BALANCE_TOTALS)
    kept_rows = rows_naming(env, KEPT)
    kept_state = state_keys_of(KEPT, last_values(read_to_end(bootstrap, f"{env['APP_ID']}-account-state-changelog")))
    printed = processes.cli("gdpr", "erase", ERASED, "--reason", "DSR-2026-0042", "--operator", "it-dpo", "--timeout", "60")
    assert "pseudonym erased-" in printed and "ledger rows 2" in printed and "3 tombstones published" in printed

    # Kafka: the account's profile and activations end in tombstones ...
    profiles = last_values(read_to_end(bootstrap, env["TOPIC_PREFIX"] + "account-profiles"))
    activations = last_values(read_to_end(bootstrap, env["TOPIC_PREFIX"] + "offer-activations"))
    assert ERASED.encode() in profiles and profiles[ERASED.encode()] is None
    erased_activations = {k: v for k, v in activations.items() if (k or b"").startswith(f"{ERASED}:".encode())}
    assert set(erased_activations) == {f"{ERASED}:grocery-5".encode(), f"{ERASED}:dining-3-now".encode()}
    assert set(erased_activations.values()) == {None}
    assert profiles[KEPT.encode()] is not None and activations[f"{KEPT}:grocery-5".encode()] is not None
    # ... and so does every key of its state and its profile on the worker's changelogs.
    states = last_values(read_to_end(bootstrap, f"{env['APP_ID']}-account-state-changelog"))
    erased_state = state_keys_of(ERASED, states)
    assert ERASED in erased_state and len(erased_state) >= 4  # its summary, a transaction row or two, event slots
    assert set(erased_state.values()) == {None}
    assert state_keys_of(KEPT, states) == kept_state and None not in kept_state.values()
    profile_table = last_values(read_to_end(bootstrap, f"{env['APP_ID']}-account-profile-changelog"))
    assert profile_table[json.dumps(ERASED).encode()] is None and profile_table[json.dumps(KEPT).encode()] is not None

    # Postgres: the rows moved to the pseudonym, every total the same, the other account untouched.
    assert naming(env, ERASED) == dict.fromkeys(TABLES, 0)
    ((pseudonym, reason, who, ledger_rows, not_earned_rows),) = query(
        env, "SELECT pseudonym, reason, erased_by, ledger_rows, not_earned_rows FROM erasure_log"
    )
    assert (reason, who, ledger_rows, not_earned_rows) == ("DSR-2026-0042", "it-dpo", 2, 1)
    assert ledger_lines(env, pseudonym) == 3
    assert query(env, TOTALS) == totals and query(env, BALANCE_TOTALS) == balance_totals
    assert rows_naming(env, KEPT) == kept_rows
    for statement in ("UPDATE ledger_entries SET amount_minor = amount_minor", "DELETE FROM purchases_not_earned"):
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="append-only"):
            query(env, statement)  # the tests connect as the superuser

    # The API: nothing of the account any more.
    for path in ("balances", "history"):
        assert httpx.get(f"{base_url}/v1/accounts/{ERASED}/{path}", headers=ops, timeout=10).status_code == 404
    gone = httpx.get(f"{base_url}/v1/operations/accounts/{ERASED}/export", headers=ops, timeout=30)
    assert gone.status_code == 404 and "erased" in gone.json()["detail"]
    refused = subprocess.run(
        [sys.executable, "-m", "stream", "gdpr", "export", ERASED],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.strip() == f"cashback gdpr: account {ERASED} was erased: no personal data of it is held"

    # A late card event of the account is dead-lettered, never written: by the worker once its
    # card-event path asks Matcher.refuse_erased (account_erased), by the ledger otherwise
    # (its entries refused: ledger_rejected).
    publish_records(env, [card_record("AUTHORIZATION", 3_000, account_id=ERASED, transaction_ref=f"{ERASED}-late")])

    def late_dead_letter() -> list[str]:
        letters = [CODEC.decode(v, "dead_letter")[1] for _, v in read_to_end(bootstrap, env["TOPIC_PREFIX"] + "dead-letters")]
        return [letter["reason"] for letter in letters if letter["key"] and ERASED.encode() in letter["key"]]

    reasons = wait_until(late_dead_letter, 60, "the late event's dead letter")
    assert set(reasons) <= {"account_erased", "ledger_rejected"}
    assert naming(env, ERASED) == dict.fromkeys(TABLES, 0)

    # --- the other account, erased by the operations route ------------------------------------
    operator = api_headers(subject="dpo-desk")
    erased = httpx.post(
        f"{base_url}/v1/operations/accounts/{KEPT}/erasure", json={"reason": "DSR-2026-0043"}, headers=operator, timeout=150
    )
    assert erased.status_code == 200, erased.text
    result = erased.json()
    assert result["pseudonym"].startswith("erased-") and result["ledger_rows"] == 2 and result["tombstones"] == 2
    assert (result["erased_by"], result["reason"]) == ("dpo-desk", "DSR-2026-0043")
    assert naming(env, KEPT) == dict.fromkeys(TABLES, 0) and query(env, TOTALS) == totals
    # No table of the database names either account any more, whatever tables later versions add.
    tables = every_table(env)
    assert len(tables) > len(TABLES)
    assert naming(env, ERASED, tables) == dict.fromkeys(tables, 0) and naming(env, KEPT, tables) == dict.fromkeys(tables, 0)
    gone = httpx.get(f"{base_url}/v1/operations/accounts/{KEPT}/export", headers=ops, timeout=30)
    assert gone.status_code == 404
