"""The balance API's answers: what each route returns, as pydantic models, so that the OpenAPI
document (``/openapi.json``) describes every field with its unit. The routes are in
``stream.api``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from stream.core.money import format_minor
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
    clawed_back_minor: int = Field(
        description="Taken back: by refunds and chargebacks (less reversed ones), and held rewards forfeited."
    )
    donated_minor: int = Field(description="Charity rewards given to the charity (reward_kind CHARITY).")
    held_minor: int = Field(
        0,
        description="Held for review: rewards an abuse rule flagged where they would have become available, not usable until released.",
    )
    paid_out_minor: int = Field(
        0,
        description="Cash paid out to the customer's bank account by payout runs, net of payouts the bank rejected (back in available).",
    )
    redeemed_minor: int = Field(
        0,
        description="Points or store credit the customer redeemed (POST /v1/accounts/{account_id}/redemptions), out of available.",
    )
    available: str = Field(description="available_minor formatted, e.g. '12.50 EUR' or '21 PTS'.")


def balance_of(row: Mapping[str, Any]) -> Balance:
    """A ``balances`` row as the API says it, every book the model names (the balances route and the
    GDPR export give the same figures)."""
    return Balance(
        **{name: row[name] for name in Balance.model_fields if name != "available"},
        available=format_minor(row["available_minor"], row["currency"]),
    )


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
        description="A ledger entry kind, NOT_EARNED for a purchase that earned nothing, or REDEMPTION_REFUSED for a "
        "redemption refused (amount 0, the amount asked in explanation.basis_minor; see explanation.reason)."
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
    holdout_bps: int = Field(default=0, description="Basis points of the accounts held out of the offer to measure it (0: none).")
    available_expiry_days: int | None = Field(
        default=None,
        description="Days a POINTS or STORE_CREDIT reward stays available before it expires unused, at the end of that UTC day (null: never).",
    )
    expiry_notice_days: int | None = Field(
        default=None, description="Days before such an expiry the customer is to be told (null: no notice)."
    )

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
            holdout_bps=offer.holdout_bps,
            available_expiry_days=offer.available_expiry_days,
            expiry_notice_days=offer.expiry_notice_days,
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
    held_out: bool = Field(
        default=False,
        description="The account is in the offer's holdout group (stream.core.holdout): activated or not, its purchases "
        "earn nothing from this offer (history lines with the reason holdout), so the spending the offer adds can be measured.",
    )


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


# --- GDPR: an account's export and its erasure (stream.gdpr) ----------------------------------------


class ExportedProfile(BaseModel):
    segments: list[str]
    updated_at: datetime = Field(description="When the bank last set the account's segments.")


class ErasureStatus(BaseModel):
    erased: bool = Field(description="False in an export: an erased account has nothing left to export (404).")


class RefusedEntry(BaseModel):
    accrual_id: str = Field(description="The entry id the account's ledger holds with other content.")
    source_event_id: str
    held_kind: str
    arrived_kind: str
    arrived_amount_minor: int
    arrived_currency: str
    detected_at: datetime


class ExportedItem(BaseModel):
    """A reconciliation item of the account (``stream.reconciliation``): an event the processor could not follow."""

    item_id: str
    kind: str
    transaction_ref: str
    purchase_ref: str | None
    amount_minor: int
    currency: str
    occurred_at: datetime
    recorded_at: datetime
    detail: str


class ExportedLine(HistoryLine):
    beneficiary_id: str | None = Field(description="The charity of a CHARITY reward.")


class AccountExport(BaseModel):
    """Everything the cashback system holds about one account (GDPR article 15), as it holds it."""

    account_id: str
    exported_at: datetime
    erasure: ErasureStatus
    balances: list[Balance] = Field(description="As /balances: one line per reward kind and unit.")
    history: list[ExportedLine] = Field(description="Every ledger line and purchase that earned nothing, the oldest first.")
    profile: ExportedProfile | None = Field(description="The account's segments as the bank last published them; null: none.")
    activations: list[Activation] = Field(
        description="The last word the bank published per offer (a deactivation too), as the worker folds them."
    )
    refused_entries: list[RefusedEntry] = Field(
        description="Entries refused because the ledger held their id with other content."
    )
    reconciliation_items: list[ExportedItem] = Field(
        default_factory=list, description="Events of the account kept for operations to reconcile, the oldest first."
    )
    sources: dict[str, str] = Field(description="Where each part was read.")


class ErasureRequest(BaseModel):
    reason: str = Field(
        min_length=1,
        max_length=500,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The request's reference in the DPO's register (e.g. DSR-2026-0042), never the customer's name: "
        "it is kept in the erasure log beside the pseudonym (no control character: a 422; never a card number: a 400).",
    )


class ErasureResult(BaseModel):
    """One erasure, as the erasure log keeps it (never the account id), and what was published."""

    erasure_id: str
    erased_at: datetime
    erased_by: str
    reason: str
    pseudonym: str | None = Field(description="What the account's ledger rows now name; null: the ledger held none.")
    ledger_rows: int
    not_earned_rows: int
    balance_rows: int
    conflict_rows: int
    budget_rows: int
    reconciliation_rows: int = Field(0, description="Reconciliation items moved to the pseudonym.")
    tombstones: int = Field(description="Tombstones published to the profile and activation topics.")


# --- abuse controls: held rewards and their review (stream.api_holds) ----------------------------


class HeldReward(BaseModel):
    """What one offer's share of one purchase holds for review now."""

    account_id: str
    transaction_ref: str = Field(description="The purchase.")
    offer_id: str | None
    reward_kind: str
    currency: str = Field(description=REWARD_UNIT)
    held_minor: int = Field(description="In HELD now (net of clawbacks since).")
    held: str = Field(description="held_minor formatted, e.g. '5.00 EUR'.")
    rule: str = Field(description="The abuse rule of its latest hold: refund_loop, purchase_burst or merchant_concentration.")
    detail: str = Field(description="The held entry's explanation: the rule's figures.")
    merchant_id: str | None
    held_at: datetime = Field(description="When it would have become available.")


class HeldRewards(BaseModel):
    holds: list[HeldReward] = Field(description="The latest held first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null on the last page.")


class HoldDecision(BaseModel):
    """A release or a forfeit of what a purchase holds, and why."""

    account_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    transaction_ref: str = Field(
        min_length=1, max_length=256, pattern=r"^[ -~]+$", description="The purchase, as the held rewards list it."
    )
    offer_id: str | None = Field(
        None, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$", description="Only that offer's share; null: every held share."
    )
    reason: str = Field(
        min_length=3,
        max_length=500,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="Why, in words, for the ledger's explanation (never a card number).",
    )


class HeldShare(BaseModel):
    offer_id: str | None
    currency: str = Field(description=REWARD_UNIT)
    held_minor: int


class HoldReview(BaseModel):
    """What the API did with a release or a forfeit. The ledger movement itself is the worker's (an
    instruction folded in the account's order): it shows in the history and balances shortly after."""

    status: str = Field(
        description="accepted (an instruction was sent: 202), or already_released / already_forfeited (nothing sent: 200)."
    )
    decision: str = Field(description="release or forfeit.")
    account_id: str
    transaction_ref: str
    offer_id: str | None
    instruction_id: str | None = Field(
        description="The instruction's event id (the ledger entry's source_event_id); null when none was sent."
    )
    held: list[HeldShare] = Field(description="What the purchase's shares hold now (before the instruction is applied).")


class MerchantFlag(BaseModel):
    flag_seq: int
    merchant_id: str
    currency: str = Field(description="The rewards' unit the merchant was judged in.")
    window_from: datetime
    window_to: datetime
    accounts: int = Field(description="Accounts its rewards went to in the window.")
    total_minor: int = Field(description="Its confirmed rewards in the window.")
    until_at: datetime = Field(description="Its accounts' purchases there stay flagged until then.")
    detail: str
    flagged_at: datetime


class MerchantFlags(BaseModel):
    flags: list[MerchantFlag] = Field(description="The latest first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null on the last page.")
