"""The balance API's payouts, scope ``cashback:operations`` only: every payout the bank's core banking system was
asked to make (customers' cash and charities' remittances) with its answer, and the unanswered-payouts gauges.

``GET /v1/operations/payouts``: the latest recorded first; ``?status=`` REQUESTED (not answered yet), CONFIRMED or
REJECTED, ``?beneficiary=`` CUSTOMER or CHARITY; ``?limit=`` 1 to 500, ``?cursor=`` the ``next_cursor`` of the
previous page (a keyset on the row's sequence). ``GET /v1/charities/{charity_id}/remittances``: one charity's
remittances, paginated the same way (404: no remittance was ever recorded for it).

The gauges (``PayoutGauges``): ``cashback_payouts_unanswered{beneficiary}`` and
``cashback_payout_oldest_unanswered_seconds{beneficiary}``, from the table every PAYOUT_GAUGES_INTERVAL_S (one
indexed read of the unanswered rows), like the reconciliation and offer results gauges: no id in any label.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from stream.api_common import CHARITY_ID, CURSOR_PATTERN, decode_cursor, encode_cursor, secured
from stream.auth import OPERATIONS
from stream.core.money import format_minor
from stream.metrics import PAYOUT_BENEFICIARIES, PAYOUT_GAUGES_LAST_RUN, PAYOUT_OLDEST_UNANSWERED, PAYOUTS_UNANSWERED
from stream.store import payouts as store

log = logging.getLogger(__name__)


class PayoutLine(BaseModel):
    payout_seq: int
    payout_id: str = Field(
        description="p:<run>:<account>:<currency> (a customer's) or d:<run>:<charity>:<currency> (a charity's)."
    )
    beneficiary_kind: Literal["CUSTOMER", "CHARITY"]
    beneficiary_id: str = Field(description="The account id (CUSTOMER) or the charity id (CHARITY).")
    amount_minor: int | None = Field(description="Minor units of currency; null: an answer read before its request.")
    currency: str
    amount: str | None = Field(description="The same amount, formatted: 40.00 EUR.")
    run_id: str
    requested_at: datetime | None
    status: Literal["REQUESTED", "CONFIRMED", "REJECTED"] = Field(description="REQUESTED: not answered yet.")
    reason_code: str | None = Field(description="REJECTED: the bank's reason code.")
    answered_at: datetime | None


class Payouts(BaseModel):
    payouts: list[PayoutLine] = Field(description="The latest recorded first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null on the last page.")


def _page(rows: list[asyncpg.Record], limit: int) -> Payouts:
    page = rows[:limit]
    lines = [
        PayoutLine(**dict(r), amount=format_minor(r["amount_minor"], r["currency"]) if r["amount_minor"] is not None else None)
        for r in page
    ]
    return Payouts(payouts=lines, next_cursor=encode_cursor(page[-1]["payout_seq"]) if len(rows) > limit else None)


def payout_routes(*, pool: Callable[..., Any], operators: Callable[..., Any]) -> APIRouter:
    """The routes, with the API's pool and operators dependencies."""
    router = APIRouter()
    limit_query = Query(50, ge=1, le=500, description="Payouts per page, the latest recorded first.")
    cursor_query = Query(None, max_length=64, pattern=CURSOR_PATTERN, description="next_cursor of the previous page.")

    @router.get(
        "/v1/operations/payouts",
        response_model=Payouts,
        dependencies=[Depends(operators)],
        **secured(OPERATIONS, paged=True),
    )
    async def get_payouts(
        status: Literal["REQUESTED", "CONFIRMED", "REJECTED"] | None = Query(None, description="Only payouts in this state."),
        beneficiary: Literal["CUSTOMER", "CHARITY"] | None = Query(None, description="Only customers' or charities'."),
        limit: int = limit_query,
        cursor: str | None = cursor_query,
        db: asyncpg.Pool = Depends(pool),
    ) -> Payouts:
        """For operations: the payouts asked of the bank's core banking system, customers' and charities', with
        their answers; ``status=REQUESTED`` lists the unanswered ones (the CashbackPayoutUnanswered alert's)."""
        before = decode_cursor(cursor) if cursor else None
        return _page(await store.listing(db, status, beneficiary, before, limit + 1), limit)

    @router.get(
        "/v1/charities/{charity_id}/remittances",
        response_model=Payouts,
        dependencies=[Depends(operators)],
        **secured(OPERATIONS, not_found="No remittance was ever recorded for this charity.", paged=True),
    )
    async def get_remittances(
        charity_id: str = CHARITY_ID,
        limit: int = limit_query,
        cursor: str | None = cursor_query,
        db: asyncpg.Pool = Depends(pool),
    ) -> Payouts:
        """For operations: the remittances of a charity's donations (``cashback donations remit``), the latest
        first, with the bank's answers. A rejected one is owed again at the next run."""
        before = decode_cursor(cursor) if cursor else None
        rows = await store.of_charity(db, charity_id, before, limit + 1)
        if not rows and before is None:
            raise HTTPException(404, f"no remittance recorded for charity {charity_id}")
        return _page(rows, limit)

    return router


class PayoutGauges:
    """Sets the unanswered-payouts gauges now and every ``interval_s`` (module doc)."""

    def __init__(self, pool: asyncpg.Pool, interval_s: float) -> None:
        self.pool, self.interval_s = pool, interval_s

    async def run(self) -> None:
        while True:
            try:
                await self.observe()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("payout gauges not computed (%s: %s)", type(error).__name__, error)
            await asyncio.sleep(self.interval_s)

    async def observe(self, now: datetime | None = None) -> dict[str, tuple[int, datetime]]:
        found = await store.unanswered(self.pool)
        at = now or datetime.now(UTC)
        for kind in PAYOUT_BENEFICIARIES:
            count, oldest = found.get(kind, (0, at))
            PAYOUTS_UNANSWERED.labels(kind).set(count)
            PAYOUT_OLDEST_UNANSWERED.labels(kind).set(max(0.0, (at - oldest).total_seconds()))
        PAYOUT_GAUGES_LAST_RUN.set(time.time())
        return found
