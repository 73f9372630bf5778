"""A ledger entry as the engine makes it: a typed, immutable record.

One entry moves ``amount_minor`` of one reward kind and currency from ``debit_book`` to
``credit_book`` of one account (PENDING, CONFIRMED, AVAILABLE, HELD, ... and EXPENSE, the bank's
side; NOT_EARNED moves nothing and says why); ``sponsor_id`` says whose side EXPENSE is (a merchant sponsor's, or
None: the bank's). Its ``accrual_id`` (``<event_id>#<n>``) is the ledger's
unique key. ``explanation`` is how it was computed, line by line.

Its wire and stored form (the ``accrual`` Avro record, the account state's recent events, the
ledger's rows) is a plain mapping with the same field names: ``record()`` and ``Entry.of``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

NOT_EARNED = "NOT_EARNED"  # a purchase that earned nothing, and why (no books moved)
# An item for operations to reconcile (accrual v4): a refund or a chargeback of a purchase the worker never saw,
# a clearing without an authorisation. No books moved; ``explanation.reason`` is its kind (``ITEM_KINDS``), the
# event's amount its basis. Written to ``reconciliation_items``, never to the ledger's entries.
RECONCILIATION = "RECONCILIATION"
ITEM_KINDS = ("unknown_refund", "unknown_chargeback", "unknown_chargeback_reversal", "force_post", "late_authorisation")
# A redemption refused (accrual v8, stream.core.redemptions): above the balance, or a wallet not known. No books
# moved; ``explanation.reason`` says why, the requested amount is its basis. Written to purchases_not_earned with its
# own line kind (migration 0018): the API answers a repeated request from it.
REDEMPTION_REFUSED = "REDEMPTION_REFUSED"
# A wallet opening the worker could not check (none of the account's recent events moved money) marks the
# account's place on the accruals topic (accrual v8, ``stream.core.payouts``): the next opening is checked against
# it. No books moved, unit XXX. Written to purchases_not_earned with its own line kind (migration 0020), never
# shown in the customer's history.
WALLET_MARK = "WALLET_MARK"
LINES_NOT_ENTRIES = frozenset(
    {NOT_EARNED, RECONCILIATION, REDEMPTION_REFUSED, WALLET_MARK}
)  # records of the accruals topic that move no money


def moves_money(entry_kind: str) -> bool:
    """Whether a record of that kind is a ledger entry (not a NOT_EARNED line, a reconciliation item nor a refused
    redemption)."""
    return entry_kind not in LINES_NOT_ENTRIES


# Records, not dataclasses: an engine step makes one or more of each, and a msgspec record is made
# more than ten times faster (and, holding nothing that could refer back to it, is left out of the
# garbage collector's scans: ``gc=False``). They encode as the same mappings.
class Explanation(msgspec.Struct, frozen=True, gc=False):
    reason: str  # the outcome's value, or what moved the money ("confirmed", "expired", ...)
    detail: str  # the computation in words: "pending 5.00% of 100.00 EUR = 5.00 EUR (rounded down)"
    basis_minor: int  # the purchase amount the reward was computed on
    basis_currency: str
    rate_bps: int
    rounding: str  # down | half_up | half_even
    carried_remainder: int  # sub-unit remainder carried to the offer's next purchase
    force_post: bool  # a clearing without an approved authorisation


class Entry(msgspec.Struct, frozen=True, gc=False):
    accrual_id: str  # <event_id>#<n>: the ledger's unique key
    source_event_id: str
    account_id: str
    transaction_ref: str
    entry_kind: str  # PENDING_CREATED, CONFIRMED, MADE_AVAILABLE, EXPIRED, CLAWED_BACK, ... or NOT_EARNED
    debit_book: str
    credit_book: str
    amount_minor: int  # > 0, except for NOT_EARNED (0)
    currency: str  # ISO 4217, or PTS for points
    reward_kind: str  # CASH, STORE_CREDIT, POINTS, CHARITY
    offer_id: str | None
    rule_version: int | None  # the offer's version that earned it
    beneficiary_id: str | None  # the charity of a CHARITY reward
    occurred_at: int  # the source event's time, epoch milliseconds
    explanation: Explanation
    merchant_id: str | None = None  # where the purchase was made (None: an entry made before it was kept)
    purchase_ref: str | None = None  # the purchase's transaction ref (a refund's or chargeback's own ref is another)
    sponsor_id: str | None = None  # who funds the reward moved: its offer's merchant sponsor (accrual v6); None: the bank

    def record(self) -> dict[str, Any]:
        """The entry as a plain mapping (the Avro ``accrual`` record's fields, JSON-ready). Spelled
        out: a generic conversion (``msgspec.structs.asdict`` of both records, or the deep copy
        ``dataclasses.asdict`` made when these were dataclasses) costs more."""
        x = self.explanation
        return {
            "accrual_id": self.accrual_id,
            "source_event_id": self.source_event_id,
            "account_id": self.account_id,
            "transaction_ref": self.transaction_ref,
            "entry_kind": self.entry_kind,
            "debit_book": self.debit_book,
            "credit_book": self.credit_book,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "reward_kind": self.reward_kind,
            "offer_id": self.offer_id,
            "rule_version": self.rule_version,
            "beneficiary_id": self.beneficiary_id,
            "occurred_at": self.occurred_at,
            "explanation": {
                "reason": x.reason,
                "detail": x.detail,
                "basis_minor": x.basis_minor,
                "basis_currency": x.basis_currency,
                "rate_bps": x.rate_bps,
                "rounding": x.rounding,
                "carried_remainder": x.carried_remainder,
                "force_post": x.force_post,
            },
            "merchant_id": self.merchant_id,
            "purchase_ref": self.purchase_ref,
            "sponsor_id": self.sponsor_id,
        }

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Entry:
        """An entry from its plain mapping (``record()``, a decoded ``accrual``, a stored state)."""
        fields = dict(record)
        fields["explanation"] = Explanation(**fields["explanation"])
        return cls(**fields)
