"""The balance API's reconciliation listing, scope ``cashback:operations`` only: the items behind each count of
the reconciliation gauges (``stream.reconciliation``), one kind at a time, the latest first, paginated.

``GET /v1/operations/reconciliation/{kind}``: ``kind`` one of ``unknown_refund``, ``unknown_chargeback``,
``unknown_chargeback_reversal``, ``force_post`` (any other: 404 naming them); ``?account_id=`` for one account's;
``?limit=`` 1 to 500; ``?cursor=`` the ``next_cursor`` of the previous page (a keyset on the item's sequence: a page
costs the same however many items there are, and items recorded meanwhile never shift a page).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, Field

from stream.api_common import CURSOR_PATTERN, decode_cursor, encode_cursor, secured
from stream.auth import OPERATIONS
from stream.core.entries import ITEM_KINDS
from stream.core.money import format_minor
from stream.store import reconciliation as store


class ReconciliationItem(BaseModel):
    item_seq: int
    item_id: str = Field(description="<source_event_id>#reconciliation: one item per card event at most.")
    kind: str = Field(description="One of " + ", ".join(ITEM_KINDS) + ".")
    account_id: str
    transaction_ref: str = Field(description="The event's own reference (a refund's or a chargeback's, or the clearing's).")
    purchase_ref: str | None = Field(description="The purchase a refund or a chargeback names.")
    amount_minor: int = Field(description="The event's billing amount, in minor units of currency.")
    currency: str
    amount: str = Field(description="The same amount, formatted: 40.00 EUR.")
    occurred_at: datetime = Field(description="When the card event happened.")
    recorded_at: datetime = Field(description="When the ledger took the item.")
    detail: str = Field(description="Why it is an item, in one line.")
    authorised_later: bool = Field(
        description="A force_post whose authorisation arrived after its clearing (a late_authorisation item of the "
        "same purchase): out of order, not a force post after all. Always false for the other kinds."
    )


class ReconciliationItems(BaseModel):
    items: list[ReconciliationItem] = Field(description="The latest recorded first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null on the last page.")


KIND = Path(..., min_length=1, max_length=64, description="The kind of item: " + ", ".join(ITEM_KINDS) + ".")


def reconciliation_routes(*, pool: Callable[..., Any], operators: Callable[..., Any]) -> APIRouter:
    """The route, with the API's pool and operators dependencies."""
    router = APIRouter()

    @router.get(
        "/v1/operations/reconciliation/{kind}",
        response_model=ReconciliationItems,
        dependencies=[Depends(operators)],
        **secured(OPERATIONS, not_found="No such kind of reconciliation item.", paged=True),
    )
    async def get_items(
        kind: str = KIND,
        account_id: str | None = Query(
            None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$", description="Only this account's."
        ),
        limit: int = Query(50, ge=1, le=500, description="Items per page, the latest recorded first."),
        cursor: str | None = Query(None, max_length=64, pattern=CURSOR_PATTERN, description="next_cursor of the previous page."),
        db: asyncpg.Pool = Depends(pool),
    ) -> ReconciliationItems:
        """For operations: the items behind a reconciliation count (which refunds found no purchase, which
        clearings came without an authorisation), each with the event's amount and why."""
        if kind not in ITEM_KINDS:
            raise HTTPException(404, f"no reconciliation items of kind {kind[:64]!r}: the kinds are {', '.join(ITEM_KINDS)}")
        before = decode_cursor(cursor) if cursor else None
        rows = await store.items(db, kind, account_id, before, limit + 1)
        page = rows[:limit]
        return ReconciliationItems(
            items=[ReconciliationItem(**dict(r), amount=format_minor(r["amount_minor"], r["currency"])) for r in page],
            next_cursor=encode_cursor(page[-1]["item_seq"]) if len(rows) > limit else None,
        )

    return router
