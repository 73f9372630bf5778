"""The balance API's offer results, scope ``cashback:operations`` only (``stream.offer_results`` says why they are
made this way, ``stream.store.offer_results`` defines each figure in ledger lines).

``GET /v1/operations/offers/{offer_id}/results``: an offer of the live book, or one the ledger names (an offer
removed from the book keeps its results; any other: 404). ``?from=`` and ``?to=``: the period, by event time,
half-open ``[from, to)``, ISO 8601 with a time zone; either may be left out (default: the offer's whole life).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from stream.api_common import OFFER_ID, secured
from stream.api_models import Problem
from stream.auth import OPERATIONS
from stream.core.money import format_minor
from stream.store import offer_results as store
from stream.store.offer_results import HOLDOUT, TREATED


class GroupResults(BaseModel):
    accounts: int = Field(description="Accounts with at least one of these purchases in the period.")
    purchases: int = Field(
        description="Treated: purchases the offer paid (a PENDING_CREATED or CONFIRMED entry of the offer). Holdout: "
        "purchases it would have paid (a NOT_EARNED line with the reason holdout naming it). Each once, at its first line."
    )
    spend_minor: int = Field(description="Their amount as judged (the basis of that first line), in minor units of currency.")
    average_basket_minor: int | None = Field(description="spend_minor / purchases, rounded down; null without purchases.")
    spend_per_account_minor: int | None = Field(description="spend_minor / accounts, rounded down; null without accounts.")
    spend: str = Field(description="spend_minor, formatted: 1250.00 EUR.")

    @classmethod
    def of(cls, figures: store.Purchases, currency: str) -> GroupResults:
        return cls(
            accounts=figures.accounts,
            purchases=figures.purchases,
            spend_minor=figures.spend_minor,
            average_basket_minor=figures.spend_minor // figures.purchases if figures.purchases else None,
            spend_per_account_minor=figures.spend_minor // figures.accounts if figures.accounts else None,
            spend=format_minor(figures.spend_minor, currency),
        )


class CurrencyResults(BaseModel):
    currency: str = Field(description="The purchases' billing currency (ISO 4217): amounts in two are never added.")
    treated: GroupResults
    holdout: GroupResults


class CostResults(BaseModel):
    reward_kind: str
    unit: str = Field(description="ISO 4217, or PTS for points.")
    booked_minor: int = Field(description="What left the sponsor's EXPENSE book in the period: cashback booked.")
    returned_minor: int = Field(description="What came back to it: pending released or expired, clawed back, forfeited.")
    cost_minor: int = Field(description="booked_minor - returned_minor: the offer's cost, pending included.")
    pending_minor: int = Field(description="Of the cost, what is still pending (net movement into PENDING in the period).")
    clawed_back_minor: int = Field(description="Clawbacks and forfeits less chargebacks reversed.")
    cost: str = Field(description="cost_minor, formatted.")


class Activations(BaseModel):
    total: int = Field(description="Accounts holding the offer activated now whose activation is dated in the period.")
    treated: int | None = Field(description="Of them, outside the holdout group (null for an offer gone from the book).")
    holdout: int | None = Field(description="Of them, in the holdout group (null for an offer gone from the book).")


class OfferResults(BaseModel):
    offer_id: str
    live: bool = Field(description="The offer is in the live book (false: removed, its results read from the ledger).")
    holdout_bps: int | None = Field(description="The live offer's holdout share (null when not live).")
    requires_activation: bool | None = Field(description="Whether the live offer needs activation (null when not live).")
    period_from: datetime | None = Field(description="The period's start, included (null: the offer's first line).")
    period_to: datetime | None = Field(description="The period's end, excluded (null: now).")
    eligible_accounts: int = Field(description="Accounts with a purchase the offer applied to, treated or held out.")
    treated_accounts: int = Field(description="Accounts with a treated purchase, every currency.")
    holdout_accounts: int = Field(description="Accounts with a held-out purchase, every currency.")
    activations: Activations | None = Field(description="Null until the API has read the activations topic.")
    currencies: list[CurrencyResults] = Field(description="Per billing currency, in alphabetical order.")
    cost: list[CostResults] = Field(description="Per reward kind and unit (the treated group's: the holdout costs nothing).")


FROM = Query(None, alias="from", description="Start of the period, included: ISO 8601 with a time zone (event time).")
TO = Query(None, alias="to", description="End of the period, excluded: ISO 8601 with a time zone (event time).")


def _aware(name: str, value: datetime | None) -> datetime | None:
    """The bound in UTC (400 without a time zone); one beyond the years 1 to 9999 once in UTC bounds nothing (None)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise HTTPException(400, f"{name} must carry a time zone (2026-12-01T00:00:00Z), not {value.isoformat()!r}")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+05:00 is before any event, 9999-12-31T23:00-05:00 after any
        return None


ROUTE = secured(OPERATIONS, not_found="An offer neither live nor named by any ledger line.")
ROUTE["responses"][400] = {
    "model": Problem,
    "description": "A query parameter the route does not take, a from or to without a time zone, or from not before to.",
}


def offer_results_routes(*, pool: Callable[..., Any], operators: Callable[..., Any]) -> APIRouter:
    """The route, with the API's pool and operators dependencies (the offer book and the activations are the app's
    state: ``offers``, ``activations``)."""
    router = APIRouter()

    @router.get(
        "/v1/operations/offers/{offer_id}/results",
        response_model=OfferResults,
        dependencies=[Depends(operators)],
        **ROUTE,
    )
    async def get_results(
        request: Request,
        offer_id: str = OFFER_ID,
        start: datetime | None = FROM,
        end: datetime | None = TO,
        db: asyncpg.Pool = Depends(pool),
    ) -> OfferResults:
        """For the bank's rewards team: what an offer did for its treated group and what its holdout group spent
        without it, per currency, and what it cost, over its whole life or a period."""
        start, end = _aware("from", start), _aware("to", end)
        if start is not None and end is not None and start >= end:
            raise HTTPException(400, f"from ({start.isoformat()}) must be before to ({end.isoformat()})")
        offer = request.app.state.offers.book.get(offer_id)
        if offer is None and not await store.known(db, offer_id):
            raise HTTPException(404, f"offer {offer_id} is not live and no ledger line names it")
        figures = (await store.figures(db, [offer_id], start, end))[offer_id]
        mirror = getattr(request.app.state, "activations", None)
        activations = None
        if mirror is not None and mirror.ready.is_set():
            counted = mirror.counts({offer_id: offer}, start, end)[offer_id]
            activations = Activations(total=counted["total"], treated=counted.get(TREATED), holdout=counted.get(HOLDOUT))
        return OfferResults(
            offer_id=offer_id,
            live=offer is not None,
            holdout_bps=offer.holdout_bps if offer else None,
            requires_activation=offer.requires_activation if offer else None,
            period_from=start,
            period_to=end,
            eligible_accounts=figures.eligible_accounts,
            treated_accounts=figures.accounts[TREATED],
            holdout_accounts=figures.accounts[HOLDOUT],
            activations=activations,
            currencies=[
                CurrencyResults(
                    currency=currency,
                    treated=GroupResults.of(figures.group(currency, TREATED), currency),
                    holdout=GroupResults.of(figures.group(currency, HOLDOUT), currency),
                )
                for currency in sorted(figures.by_currency)
            ],
            cost=[
                CostResults(
                    reward_kind=c.reward_kind,
                    unit=c.unit,
                    booked_minor=c.booked_minor,
                    returned_minor=c.returned_minor,
                    cost_minor=c.cost_minor,
                    pending_minor=c.pending_minor,
                    clawed_back_minor=c.clawed_back_minor,
                    cost=format_minor(c.cost_minor, c.unit),
                )
                for c in figures.costs
            ],
        )

    return router
