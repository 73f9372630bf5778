"""A STAND-IN for the bank's mobile app, for the local stack only (``make run``): it redeems some of the
customers' points and store credit through the balance API (``POST /v1/accounts/{id}/redemptions``, the
path a real app takes), so redemptions show in the ledger, the balances and the dashboards while one
watches. It is no app and has no customers: every ``interval`` seconds it picks a few balances with
points or store credit available (read from the stack's own Postgres, which a real app would not do)
and redeems about half of each with a token of its own (``cashback:redemptions.write`` for that account,
signed with the stack's key), and, one round in ``ABOVE_EVERY``, one unit more than is available, which
the worker refuses (409). Each redemption has its own idempotency key (``demo-<run>-<n>``); a request
whose answer was lost (a time-out, a 5xx) is sent again with the same key, as an app should, and
redeems nothing twice.

Run as ``python -m stream.localstack.bank_app`` with the stack's environment and ``BANK_APP_API_URL``,
``BANK_APP_SIGNING_KEY`` (the stack's private key file) and ``BANK_APP_INTERVAL_S``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from stream.auth import REDEMPTIONS_WRITE
from stream.localstack.tokens import LOCAL_ISSUER, SigningKey, mint
from stream.settings import Settings

log = logging.getLogger(__name__)

PER_ROUND = 3  # balances redeemed from per round
ABOVE_EVERY = 4  # one round in this many asks one unit more than is available (refused)
ATTEMPTS = 3  # a request whose answer was lost is sent again with the same key, this many times at most
_SPENDABLE = """
SELECT account_id, reward_kind, currency::text AS unit, available_minor FROM balances
WHERE reward_kind IN ('POINTS', 'STORE_CREDIT') AND available_minor > 1 ORDER BY random() LIMIT $1
"""


@dataclass(frozen=True, slots=True)
class Ask:
    account_id: str
    reward_kind: str
    unit: str
    amount_minor: int
    key: str


def plan(rows: list[dict[str, Any]], run: str, round_no: int) -> list[Ask]:
    """The redemptions of one round: about half of each balance; in one round of ``ABOVE_EVERY``, the first
    asks one unit more than is available (the worker refuses it)."""
    asks = []
    for n, row in enumerate(rows):
        available = row["available_minor"]
        above = round_no % ABOVE_EVERY == 0 and n == 0
        amount = available + 1 if above else max(1, available // 2)
        asks.append(Ask(row["account_id"], row["reward_kind"], row["unit"], amount, f"demo-{run}-{round_no}-{n}"))
    return asks


async def redeem(client: httpx.AsyncClient, key: SigningKey, audience: str, ask: Ask, issuer: str = LOCAL_ISSUER) -> int:
    """One redemption through the API, sent again with the same key while its answer is lost: the status."""
    token = mint(
        key,
        issuer=issuer,
        audience=audience,
        scopes=[REDEMPTIONS_WRITE],
        accounts=[ask.account_id],
        subject="demo-bank-app",
    )
    body = {"reward_kind": ask.reward_kind, "unit": ask.unit, "amount_minor": ask.amount_minor, "reference": "demo catalogue"}
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": ask.key}
    status = 0
    for _ in range(ATTEMPTS):
        try:
            response = await client.post(f"/v1/accounts/{ask.account_id}/redemptions", json=body, headers=headers)
        except httpx.HTTPError:
            continue
        status = response.status_code
        if status < 500:
            break
    return status


async def serve(settings: Settings, api_url: str, key: SigningKey, interval_s: float, stop: asyncio.Event) -> int:
    """Redeem every ``interval_s`` until ``stop`` is set; how many redemptions were asked."""
    run = secrets.token_hex(3)
    asked = 0
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
            round_no = 0
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), interval_s)
                except TimeoutError:
                    pass
                if stop.is_set():
                    break
                round_no += 1
                asked += len(await redeem_round(pool, client, key, settings.api_auth_audience, run, round_no))
    finally:
        await pool.close()
    return asked


async def redeem_round(
    pool: asyncpg.Pool,
    client: httpx.AsyncClient,
    key: SigningKey,
    audience: str,
    run: str,
    round_no: int,
    issuer: str = LOCAL_ISSUER,
) -> list[tuple[Ask, int]]:
    """One round: the redemptions of ``plan`` for a few balances with something to redeem, and their statuses."""
    rows = [dict(r) for r in await pool.fetch(_SPENDABLE, PER_ROUND)]
    done = []
    for ask in plan(rows, run, round_no):
        status = await redeem(client, key, audience, ask, issuer)
        log.info("redemption %s of %d %s: HTTP %d", ask.key, ask.amount_minor, ask.unit, status)
        done.append((ask, status))
    return done


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_url = os.environ["BANK_APP_API_URL"]
    key = SigningKey.from_pem(Path(os.environ["BANK_APP_SIGNING_KEY"]).read_bytes())
    interval_s = float(os.environ.get("BANK_APP_INTERVAL_S", "30"))
    log.info("bank app STAND-IN (local stack only): redeeming points and store credit every %.0f s", interval_s)
    stop = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        asked = await serve(settings, api_url, key, interval_s, stop)
        log.info("bank app stand-in stopped after %d redemptions", asked)

    asyncio.run(run())


if __name__ == "__main__":
    main()
