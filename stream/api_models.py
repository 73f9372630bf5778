"""The balance API's answers: what each route returns, as pydantic models, so that the OpenAPI
document (``/openapi.json``) describes every field with its unit. The routes are in
``stream.api``.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from stream.core.offers import Offer

# The unit of a reward, said the same way in the accrual schema (accrual.v2.avsc), the README and here.
REWARD_UNIT = (
    "The reward's unit: the purchase's ISO 4217 billing currency for CASH, STORE_CREDIT and CHARITY; "
    "PTS (whole points, not a currency) for POINTS."
)


class Balance(BaseModel):
    reward_kind: str = Field(description="CASH, POINTS, STORE_CREDIT or CHARITY.")
    currency: str = Field(description=REWARD_UNIT)
    pending_minor: int = Field(description="Authorised, not yet settled.")
    confirmed_minor: int = Field(description="Settled, inside the return window.")
    available_minor: int = Field(description="Usable now.")
    lifetime_earned_minor: int
    clawed_back_minor: int
    donated_minor: int = Field(description="Charity rewards given to the charity (reward_kind CHARITY).")
    available: str = Field(description="available_minor formatted, e.g. '12.50 EUR' or '21 PTS'.")


class Balances(BaseModel):
    account_id: str
    balances: list[Balance] = Field(
        description="One line per reward kind and unit the account has ledger entries in. Empty for an account "
        "whose purchases have earned nothing yet: every balance is zero."
    )


class Explanation(BaseModel):
    reason: str
    detail: str
    basis_minor: int
    basis_currency: str
    rate_bps: int
    rounding: str
    carried_remainder: int
    force_post: bool


class HistoryLine(BaseModel):
    accrual_id: str
    source_event_id: str
    transaction_ref: str
    entry_kind: str = Field(
        description="A ledger entry kind, or NOT_EARNED for a purchase that earned nothing (see explanation.reason)."
    )
    debit_book: str
    credit_book: str
    amount_minor: int
    currency: str = Field(description=REWARD_UNIT + " NOT_EARNED lines: the purchase's billing currency.")
    reward_kind: str | None
    offer_id: str | None
    rule_version: int | None
    occurred_at: datetime
    recorded_at: datetime
    explanation: Explanation


class History(BaseModel):
    account_id: str
    entries: list[HistoryLine]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null on the last page.")


class Problem(BaseModel):
    detail: str


class OfferSummary(BaseModel):
    offer_id: str
    name: str
    sponsor: str
    reward_kind: str
    rate_bps: int | None
    valid_from: datetime | None
    valid_to: datetime | None
    requires_activation: bool

    @classmethod
    def of(cls, offer: Offer) -> OfferSummary:
        return cls(
            offer_id=offer.offer_id,
            name=offer.name,
            sponsor=offer.sponsor,
            reward_kind=offer.reward_kind.value,
            rate_bps=getattr(offer, "rate_bps", None),
            valid_from=offer.valid_from,
            valid_to=offer.valid_to,
            requires_activation=bool(getattr(offer, "requires_activation", False)),
        )


class Donations(BaseModel):
    """One charity's account in one currency. Each amount counts once: a reward is promised until its
    return window ends, then donated; what a refund or chargeback took back is in neither."""

    charity_id: str
    currency: str = Field(description="The purchases' ISO 4217 billing currency.")
    donated_minor: int = Field(description="Given: charity rewards whose return window ended, net of clawbacks of them.")
    promised_minor: int = Field(
        description="Not given yet: charity rewards pending or inside their return window, net of releases and clawbacks."
    )
    clawed_back_minor: int = Field(
        description="Taken back by refunds and chargebacks (less reversed chargebacks); already out of donated and promised."
    )
    donors: int = Field(description="Accounts with something donated or promised to the charity in this currency.")


class Activation(BaseModel):
    account_id: str
    offer_id: str
    active: bool
    changed_at: datetime = Field(description="Purchases from this instant on count (when active).")


class LedgerConflict(BaseModel):
    conflict_seq: int
    account_id: str
    accrual_id: str = Field(description="The entry id the account's ledger holds with other content.")
    source_event_id: str
    held_kind: str = Field(description="What the ledger holds under the id: an entry kind, or NOT_EARNED.")
    arrived_kind: str
    arrived_amount_minor: int
    arrived_currency: str
    detected_at: datetime


class LedgerConflicts(BaseModel):
    conflicts: list[LedgerConflict]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null on the last page.")
