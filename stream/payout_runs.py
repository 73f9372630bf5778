"""A payout run asked now (``cashback payouts run``): one ``payout_run`` message per account the ledger
shows with AVAILABLE cash, on the ``<prefix>payout-runs`` topic, keyed and partitioned by account like its
card events, so the worker owning the account decides it in the account's order (``stream.core.payouts``).

The ledger only says whom to ask: the worker decides the amount from the account's wallet (the ledger lags
it), so an account whose cash the sink has not written yet is asked at the next run, and an account the
ledger shows with cash the worker has since clawed back or expired is paid what the wallet holds, or
nothing. The minimums are PAYOUT_MINIMUMS, carried by each message: a run's messages are decided the same
whenever they are read. A run's id (default: now, UTC, to the minute, ``2026-12-03T0200Z``) and its time
make each account's message one event (``payout-run:<run id>:<account>``): a run id that names a time is
asked at that time, so the run asked again is the same event, recognised (``duplicate``); another run id
asked again is asked at another time, the same event id with other content, which the worker refuses and
dead-letters (``duplicate_conflict``). Either way nothing is paid twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from schemas.codec import Codec
from stream.core.payout_messages import PAYOUT_RUN_ID
from stream.producing import send_once
from stream.settings import Settings
from topics.catalogue import Topic, account_partition

_WITH_CASH = """
SELECT DISTINCT account_id FROM balances WHERE reward_kind = 'CASH' AND available_minor > 0 ORDER BY account_id
"""


class RunIdError(ValueError):
    """A run id that is not 1 to 64 letters, digits, '.', '_' or '-'."""


def run_time(run_id: str) -> datetime | None:
    """The time a run id names (``2026-12-03T0200Z``, a scheduled run's: ``stream.core.payouts.run_id_at``), else None.
    A run's messages carry it as their time, so the run asked again is the very same event."""
    try:
        return datetime.strptime(run_id, "%Y-%m-%dT%H%MZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def check_run_id(run_id: str) -> str:
    if not PAYOUT_RUN_ID.fullmatch(run_id):
        raise RunIdError(
            f"{run_id!r} is not a run id (1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit)"
        )
    return run_id


def run_record(settings: Settings, run_id: str, account_id: str, at: datetime) -> dict[str, Any]:
    """One account's ``payout_run`` message, with PAYOUT_MINIMUMS."""
    named, default = settings.payout_minimums_by_currency()
    return {
        "run_id": run_id,
        "account_id": account_id,
        "requested_at": at,
        "minimums": [{"currency": currency, "minimum_minor": minimum} for currency, minimum in sorted(named.items())],
        "default_minimum_minor": default,
    }


async def accounts_with_cash(database_url: str) -> list[str]:
    """The accounts the ledger shows with AVAILABLE cash in some currency."""
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        return [row["account_id"] for row in await connection.fetch(_WITH_CASH)]
    finally:
        await connection.close()


async def ask(settings: Settings, codec: Codec, topic: Topic, run_id: str, at: datetime) -> int:
    """Publish run ``run_id`` for every account with AVAILABLE cash in the ledger; how many were asked."""
    accounts = await accounts_with_cash(settings.database_url)
    messages = [
        (
            topic.name,
            account.encode(),
            codec.encode("payout_run", run_record(settings, run_id, account, at)),
            account_partition(account, topic.partitions),
        )
        for account in accounts
    ]
    await send_once(settings, messages)
    return len(messages)


# --- opening the wallets of states stored before wallets were kept --------------------------------

_LATEST = """
SELECT DISTINCT ON (account_id) account_id, accrual_id FROM ledger_entries
WHERE account_id = ANY($1::text[]) ORDER BY account_id, entry_seq DESC
"""
_LATEST_MARK = """
SELECT DISTINCT ON (account_id) account_id, accrual_id FROM purchases_not_earned
WHERE account_id = ANY($1::text[]) AND line_kind = 'WALLET_MARK' ORDER BY account_id, history_seq DESC
"""
_AVAILABLE = """
SELECT account_id, reward_kind, currency, available_minor FROM balances WHERE account_id = ANY($1::text[])
"""
_ACCOUNTS = "SELECT DISTINCT account_id FROM balances ORDER BY account_id"


def opening_record(
    opening_id: str,
    account_id: str,
    at: datetime,
    actor: str,
    last_accrual_id: str | None,
    available: list[tuple[str, str, int]],
    last_mark_id: str | None = None,
) -> dict[str, Any]:
    """One account's wallet opening, as a ``payout_run`` message with ``wallet_opening`` set."""
    return {
        "run_id": opening_id,
        "account_id": account_id,
        "requested_at": at,
        "minimums": [],
        "default_minimum_minor": None,
        "wallet_opening": {
            "actor": actor,
            "last_accrual_id": last_accrual_id,
            "available": [{"reward_kind": k, "unit": u, "amount_minor": a} for k, u, a in sorted(available)],
            "last_mark_id": last_mark_id,
        },
    }


async def ledger_wallets(
    database_url: str, accounts: list[str] | None
) -> dict[str, tuple[str | None, str | None, list[tuple[str, str, int]]]]:
    """Per account (those given, else every account with a balance): the ledger's latest entry id, its latest
    wallet mark's and its AVAILABLE per (reward kind, unit), read in one transaction (one snapshot: they agree)."""
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            wanted = accounts if accounts else [row["account_id"] for row in await connection.fetch(_ACCOUNTS)]
            latest = {row["account_id"]: row["accrual_id"] for row in await connection.fetch(_LATEST, wanted)}
            marks = {row["account_id"]: row["accrual_id"] for row in await connection.fetch(_LATEST_MARK, wanted)}
            found: dict[str, tuple[str | None, str | None, list[tuple[str, str, int]]]] = {
                a: (latest.get(a), marks.get(a), []) for a in wanted
            }
            for row in await connection.fetch(_AVAILABLE, wanted):
                found[row["account_id"]][2].append((row["reward_kind"], row["currency"].strip(), row["available_minor"]))
            return found
    finally:
        await connection.close()


async def open_wallets(
    settings: Settings, codec: Codec, topic: Topic, opening_id: str, at: datetime, actor: str, accounts: list[str] | None
) -> int:
    """Publish a wallet opening for each account (given, else every account of the ledger): the worker
    applies it only to a wallet not known, and only when the ledger had caught up with the account."""
    wallets = await ledger_wallets(settings.database_url, accounts)
    messages = [
        (
            topic.name,
            account.encode(),
            codec.encode("payout_run", opening_record(opening_id, account, at, actor, last, available, mark)),
            account_partition(account, topic.partitions),
        )
        for account, (last, mark, available) in sorted(wallets.items())
    ]
    await send_once(settings, messages)
    return len(messages)
