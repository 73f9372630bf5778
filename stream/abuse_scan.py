"""The cross-account abuse rule, ``merchant_concentration`` (``stream.core.abuse``): a merchant whose
rewards went to few accounts and add up to a lot, found over the ledger by the sink's process.

Why here: the rules engine decides one account at a time on the worker that owns it, so it never
sees another account's rewards, and a merchant's customers are spread over every partition. The
ledger is the one place holding every account's confirmed rewards with their merchant (accrual v3,
migration 0009). So every ``ABUSE_SCAN_INTERVAL_S`` the sink's process:

1. takes a transaction-scoped advisory lock (one scan at a time, however many sinks run);
2. sums each merchant's CONFIRMED rewards of the last ``window_days`` (event time), per unit and
   account, and keeps the merchants with ``max_accounts`` accounts or fewer and ``min_total_minor``
   or more in that unit, leaving out those with a flag still running;
3. records each flag (``merchant_flags``: the figures, no account id) and sends each of its accounts
   a ``HOLD_MERCHANT`` instruction (``stream.instructions``), waiting for the broker's
   acknowledgement before it commits: a crash before the commit sends the flag again at the next
   scan, under another flag id (the engine flags what is flagged already once more: no change).

The worker folds the instruction in the account's order (``stream.core.holds``): the account's
purchases at that merchant whose reward is not spendable yet are flagged, and so are those it makes
there until the flag ends (``hold_days``); each is HELD when it would become available.

Limits, honestly:
- **Late**: it sees rewards once they are confirmed and in the ledger, and acts at the next scan; a
  reward spendable before then (an offer without return window) is not held. With a return window
  (30 days by default) every reward of the window is still caught.
- **Gross**: it sums confirmations, not what refunds later took back; a merchant whose rewards were
  mostly refunded is still flagged (a refund loop there is suspect anyway).
- **One unit at a time**: no exchange rate is known, so a merchant's EUR and JPY rewards are judged
  apart, each against its own threshold; a unit with no threshold is not judged.
- **Its cost** is a scan of the window's confirmations (their own partial index, by time): fine at
  a few million a window; beyond, a per-day aggregate maintained by the sink would replace it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg
from aiokafka.errors import KafkaError

from schemas.codec import Codec
from stream import instructions
from stream.core.abuse import MERCHANT_CONCENTRATION, MerchantConcentration
from stream.core.money import format_minor
from stream.metrics import MERCHANTS_FLAGGED
from stream.producing import send_once
from stream.settings import Settings
from stream.store import holds as store
from topics.catalogue import Catalogue

log = logging.getLogger(__name__)

_SCAN_LOCK = 0x6D65726368616E74  # "merchant": one scan at a time across processes


class MerchantScan:
    def __init__(self, settings: Settings, catalogue: Catalogue, codec: Codec, rule: MerchantConcentration) -> None:
        self.settings = settings
        self.topic = catalogue.instructions
        self.codec = codec
        self.rule = rule

    async def run(self) -> None:
        """Scan every ``ABUSE_SCAN_INTERVAL_S``, forever; a failed scan is logged and tried at the next."""
        while True:
            await asyncio.sleep(self.settings.abuse_scan_interval_s)
            try:
                await self.scan(datetime.now(UTC))
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, KafkaError) as error:
                interval = self.settings.abuse_scan_interval_s
                log.warning(
                    "%s scan failed (%s: %s); next in %.0f s", MERCHANT_CONCENTRATION, type(error).__name__, error, interval
                )

    async def scan(self, now: datetime) -> list[str]:
        """One scan, as of ``now``: the details of the flags it recorded and sent."""
        rule = self.rule
        window = (now - timedelta(days=rule.window_days), now)
        until = now + timedelta(days=rule.hold_days)
        connection = await asyncpg.connect(self.settings.database_url, timeout=10)
        try:
            async with connection.transaction():
                if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", _SCAN_LOCK):
                    return []  # another sink is scanning
                found = await store.concentrated_merchants(connection, *window, rule.max_accounts, rule.min_total_minor)
                details, messages = [], []
                for row in found:
                    merchant, currency, accounts, total = (
                        row["merchant_id"],
                        row["currency"],
                        row["account_ids"],
                        row["total_minor"],
                    )
                    detail = (
                        f"merchant {merchant} paid {format_minor(total, currency)} of rewards to {len(accounts)} "
                        f"account{'s' if len(accounts) > 1 else ''} in the {rule.window_days} days to {now:%Y-%m-%d %H:%M} UTC; "
                        f"rule: {rule.max_accounts} accounts or fewer, {format_minor(rule.min_total_minor[currency], currency)} or more"
                    )
                    flag = await store.record_flag(connection, merchant, currency, window, len(accounts), total, until, detail)
                    for account in accounts:
                        hold = instructions.merchant_hold(flag, account, merchant, currency, until, detail, now)
                        messages.append(instructions.message(self.codec, self.topic, hold))
                    details.append(detail)
                if messages:
                    await send_once(self.settings, messages)  # acknowledged before the flags commit
        finally:
            await connection.close()
        for detail in details:
            log.warning("%s: %s", MERCHANT_CONCENTRATION, detail)
        MERCHANTS_FLAGGED.inc(len(details))
        return details
