"""The outcome codes of the rules engine: the single list of what one event can do, and of why a
purchase earned nothing. Re-exported by ``stream.core.rules``."""

from __future__ import annotations

import enum


class Outcome(str, enum.Enum):
    """What one event did. Values are the ``outcome`` label of ``cashback_decisions_total`` and the
    ``reason`` of NOT_EARNED records."""

    EARNED = "earned"
    MATCHED_ACCRUES_ON_CLEARING = "matched_accrues_on_clearing"
    ADJUSTED = "adjusted"
    RELEASED = "released"
    EXPIRED = "expired"
    MADE_AVAILABLE = "made_available"
    AVAILABLE_EXPIRED = "available_expired"  # unused points or store credit expired (stream.core.expiry)
    EXPIRY_NOTICED = "expiry_noticed"  # the customer is told points or store credit expire soon (stream.core.notices)
    CONFIRMED = "confirmed"
    CLAWED_BACK = "clawed_back"
    RECREDITED = "recredited"
    # abuse controls (stream.core.holds): a reward held instead of made available, and what
    # operations decided; a merchant flagged across accounts
    HELD = "held"
    HOLD_RELEASED = "hold_released"
    HOLD_FORFEITED = "hold_forfeited"
    FLAGGED = "flagged"
    NO_CHANGE = "no_change"
    # cash payouts (stream.core.payouts)
    PAID_OUT = "paid_out"  # a run paid AVAILABLE cash out (one payout per currency)
    NOTHING_TO_PAY = "nothing_to_pay"  # a run found no currency at or above its minimum
    WALLET_UNKNOWN = "wallet_unknown"  # a run skipped an account whose AVAILABLE is not known (stored before wallets)
    PAYOUT_CONFIRMED = "payout_confirmed"
    PAYOUT_REJECTED = "payout_rejected"  # the money went back to AVAILABLE
    WALLET_OPENED = "wallet_opened"
    LEDGER_BEHIND = "ledger_behind"  # an opening whose ledger balances are not the worker's latest: not applied
    WALLET_MARKED = "wallet_marked"  # an opening the worker could not check: a mark made for the next one
    # redemptions (stream.core.redemptions)
    REDEEMED = "redeemed"  # points or store credit redeemed: AVAILABLE -> REDEEMED
    REDEMPTION_REFUSED = "redemption_refused"  # above the balance, or a wallet not known: nothing moved
    # a purchase that earns nothing, and why (the order is the order matching judges them in)
    DECLINED = "declined"
    NOT_A_PURCHASE = "not_a_purchase"
    EXCLUDED_MCC = "excluded_mcc"
    NO_MATCHING_OFFER = "no_matching_offer"
    NOT_IN_SEGMENT = "not_in_segment"
    OUTSIDE_SCHEDULE = "outside_schedule"
    NOT_ACTIVATED = "not_activated"
    CURRENCY_NOT_PRICED = "currency_not_priced"
    BELOW_MIN_SPEND = "below_min_spend"
    # the account is in the holdout group of every offer that would have paid (stream.core.holdout)
    HOLDOUT = "holdout"
    CAP_REACHED = "cap_reached"
    BUDGET_EXHAUSTED = "budget_exhausted"
    # follow-ups that find nothing to act on, and replays
    UNKNOWN_TRANSACTION = "unknown_transaction"
    # an event of a transaction older than the account's horizon (stream.core.rules): forgotten, so
    # neither applied nor judged again
    BEYOND_HORIZON = "beyond_horizon"
    ALREADY_SETTLED = "already_settled"
    DUPLICATE = "duplicate"
    DUPLICATE_CONFLICT = "duplicate_conflict"
