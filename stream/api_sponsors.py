"""The balance API's sponsor statements, scope ``cashback:operations`` only: who pays for the rewards (``stream.store
.sponsor_statements`` defines each figure in ledger lines).

``GET /v1/operations/sponsors/{sponsor_id}/statements/{month}``: a merchant sponsor's statement for a calendar month
(``YYYY-MM``, UTC, by the entries' event time), or the bank's own budget's (``sponsor_id`` ``bank``). A month that is
not ``YYYY-MM`` (years 1000 to 2999): 422, before the route reads it. A sponsor no live offer names and no ledger entry carries: 404 (a typo is not a
statement of zeros); a known sponsor with nothing in the month: 200, no lines.

``GET /v1/operations/sponsors/{sponsor_id}/statements/{month}/entries``: the ledger lines behind it, ``?limit=`` 1 to
500 a page, ``?cursor=`` the ``next_cursor`` of the previous page (a keyset on ``entry_seq``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from stream.api_common import CURSOR_PATTERN, decode_cursor, encode_cursor, secured
from stream.auth import OPERATIONS
from stream.core.money import format_minor
from stream.store import sponsor_statements as store


class StatementLine(BaseModel):
    reward_kind: str
    unit: str = Field(description="ISO 4217, or PTS for points: amounts in two units are never added.")
    booked_minor: int = Field(description="What left the sponsor's EXPENSE book in the month: rewards booked.")
    returned_minor: int = Field(
        description="What came back to it: pending released or expired, clawed back, forfeited, expired unused."
    )
    net_minor: int = Field(description="booked_minor - returned_minor: the month's cost, pending included.")
    pending_minor: int = Field(description="Of net_minor, the movement into PENDING in the month (may be negative).")
    owed_minor: int = Field(description="net_minor - pending_minor: what the sponsor owes for the month (confirmed and beyond).")
    clawed_back_minor: int = Field(description="Clawbacks and forfeits less chargebacks reversed (within returned_minor).")
    purchases: int = Field(
        description="Purchases first paid in the month (each once, however many of the sponsor's offers paid it)."
    )
    entries: int = Field(description="Ledger entries behind the line (the entries listing gives them).")
    owed: str = Field(description="owed_minor, formatted: 12.50 EUR.")

    @classmethod
    def of(cls, figures: store.Figures) -> StatementLine:
        return cls(
            reward_kind=figures.reward_kind,
            unit=figures.unit,
            booked_minor=figures.booked_minor,
            returned_minor=figures.returned_minor,
            net_minor=figures.net_minor,
            pending_minor=figures.pending_minor,
            owed_minor=figures.owed_minor,
            clawed_back_minor=figures.clawed_back_minor,
            purchases=figures.purchases,
            entries=figures.entries,
            owed=format_minor(figures.owed_minor, figures.unit),
        )


class OfferSubtotal(BaseModel):
    offer_id: str
    lines: list[StatementLine] = Field(description="The offer's part of the statement's lines.")


class SponsorStatement(BaseModel):
    sponsor_id: str = Field(description="The merchant sponsor, or bank: the bank's own budget (bank-funded offers).")
    month: str = Field(description="YYYY-MM.")
    period_from: datetime = Field(description="The month's first instant, included (UTC, event time).")
    period_to: datetime = Field(description="The next month's first instant, excluded.")
    lines: list[StatementLine] = Field(description="Per reward kind and unit; empty when nothing moved in the month.")
    offers: list[OfferSubtotal] = Field(description="The same per offer, by offer id: the lines add up to these.")


class StatementEntry(BaseModel):
    entry_seq: int
    accrual_id: str
    account_id: str
    offer_id: str | None
    rule_version: int | None
    entry_kind: str
    debit_book: str
    credit_book: str
    amount_minor: int
    unit: str
    reward_kind: str
    occurred_at: datetime = Field(description="The card event's time: what places the entry in the month.")
    merchant_id: str | None
    purchase_ref: str = Field(description="The purchase the reward is of.")
    amount: str = Field(description="amount_minor, formatted.")


class StatementEntries(BaseModel):
    entries: list[StatementEntry] = Field(description="In entry_seq order.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


SPONSOR_ID = Path(
    ...,
    min_length=1,
    max_length=64,
    pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    description="A merchant sponsor's id (an offer's sponsor_id), or bank for the bank's own budget.",
)
# The document says which months exist (years 1000 to 2999): one of another form is refused before any route reads it (422).
MONTH_PATTERN = r"^[12][0-9]{3}-(0[1-9]|1[0-2])$"
MONTH = Path(..., pattern=MONTH_PATTERN, description="The calendar month, YYYY-MM (UTC, by event time; years 1000 to 2999).")
NOT_FOUND = "A sponsor no live offer names and no ledger entry carries."


def sponsor_routes(*, pool: Callable[..., Any], operators: Callable[..., Any]) -> APIRouter:
    """The routes, with the API's pool and operators dependencies (the live offer book is the app's state ``offers``)."""
    router = APIRouter()

    async def checked(request: Request, db: asyncpg.Pool, sponsor_id: str, month: str) -> None:
        """400 for a month the pattern admits and the calendar does not (none: kept as a guard); 404 for a sponsor
        neither live nor in the ledger."""
        try:
            store.month_bounds(month)
        except store.MonthError as error:
            raise HTTPException(400, str(error)) from None
        live = any(offer.sponsor_id == sponsor_id for offer in request.app.state.offers.book.offers)
        if not (live or store.is_sponsor_id(sponsor_id) and await store.known(db, sponsor_id)):
            raise HTTPException(404, f"sponsor {sponsor_id} funds no live offer and no ledger entry")

    @router.get(
        "/v1/operations/sponsors/{sponsor_id}/statements/{month}",
        response_model=SponsorStatement,
        dependencies=[Depends(operators)],
        **secured(OPERATIONS, not_found=NOT_FOUND),
    )
    async def get_statement(
        request: Request, sponsor_id: str = SPONSOR_ID, month: str = MONTH, db: asyncpg.Pool = Depends(pool)
    ) -> SponsorStatement:
        """For finance: what a merchant sponsor (or, as bank, the bank's own budget) owes for a month's rewards,
        per reward kind and unit, and per offer."""
        await checked(request, db, sponsor_id, month)
        found = await store.statement(db, sponsor_id, month)
        return SponsorStatement(
            sponsor_id=sponsor_id,
            month=month,
            period_from=found.start,
            period_to=found.end,
            lines=[StatementLine.of(f) for f in found.lines],
            offers=[
                OfferSubtotal(offer_id=offer_id, lines=[StatementLine.of(f) for f in lines])
                for offer_id, lines in found.offers.items()
            ],
        )

    @router.get(
        "/v1/operations/sponsors/{sponsor_id}/statements/{month}/entries",
        response_model=StatementEntries,
        dependencies=[Depends(operators)],
        **secured(OPERATIONS, not_found=NOT_FOUND, paged=True),
    )
    async def get_statement_entries(
        request: Request,
        sponsor_id: str = SPONSOR_ID,
        month: str = MONTH,
        limit: int = Query(100, ge=1, le=500, description="Entries per page, in entry_seq order."),
        cursor: str | None = Query(None, max_length=64, pattern=CURSOR_PATTERN, description="next_cursor of the previous page."),
        db: asyncpg.Pool = Depends(pool),
    ) -> StatementEntries:
        """For finance: the ledger entries behind a sponsor's statement, to explain each line."""
        await checked(request, db, sponsor_id, month)
        after = decode_cursor(cursor) if cursor else 0
        rows = await store.entries(db, sponsor_id, month, after, limit + 1)
        page = rows[:limit]
        return StatementEntries(
            entries=[StatementEntry(**row, amount=format_minor(row["amount_minor"], row["unit"])) for row in page],
            next_cursor=encode_cursor(page[-1]["entry_seq"]) if len(rows) > limit else None,
        )

    return router
