"""One account's state, as the rules engine takes and returns it: typed records (msgspec Structs),
which are also how the worker stores them (``stream.core.state_rows`` encodes them as MessagePack).

- ``AccountState``: the account's transactions, the events it remembers, its cap usage and carried
  remainders, and when something of it next falls due;
- ``Txn``: one purchase (by transaction ref), with one ``Share`` per offer it earns, every event id
  of its life (``events``) and, for a purchase that earns nothing, why (``Refusal``);
- ``Share``: what one offer pays on one purchase: its terms as they were at the purchase, and the
  amounts it holds in each book;
- ``Lot``: points or store credit available on one day, which expire together (``stream.core.expiry``);
- ``Watch`` and ``Flag``: what the abuse rules remember of the account, and why a purchase's reward
  is held (``stream.core.holds``).

``decide`` never mutates a state it is given: it returns a new one, sharing the transactions it did
not touch (``AccountStep.txn`` copies a transaction and its shares before changing them). A field
missing from a record stored by an earlier version reads as its default (a share stored before
offer v2 reads as a rate offer without limits, its basis currency its currency).
"""

from __future__ import annotations

from typing import Any

import msgspec

from stream.core.entries import Entry


class Share(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """One offer's share of one purchase: its terms at the purchase and what it holds."""

    offer_id: str
    version: int
    rounding: str
    reward_kind: str
    pending_days: int
    accrue_on: str
    currency: str  # the unit of every amount below (ISO 4217, or PTS)
    max_reward_minor: int | None = None
    method: str = "rate"  # rate | fixed | points
    rate_bps: int = 0
    tier: str | None = None
    boost: tuple[int, int] | None = None  # (threshold_minor, rate_bps)
    fixed_minor: int | None = None
    points_per_unit: int | None = None
    charity_id: str | None = None
    basis_currency: str = ""  # the purchase's billing currency ("" read as ``currency``)
    cap: tuple[str, int] | None = None  # (period, amount_minor)
    cap_period: str | None = None  # the period key the purchase counts in
    budget: int | None = None
    limits_key: str | None = None  # what caps and budgets count against (None: the offer id)
    place: str = ""  # the local time and place the offer was judged at, when it mattered
    pending: int = 0  # now in PENDING
    confirmed: int = 0  # now in CONFIRMED
    available: int = 0  # now in AVAILABLE
    earned: int = 0  # ever confirmed
    clawed_back: int = 0  # ever clawed back (refunds and chargebacks), less what was recredited
    refund_clawed: int = 0
    chargeback_clawed: int = 0
    available_at_ms: int | None = None  # when confirmed cashback becomes available
    held: int = 0  # now in HELD: flagged by an abuse rule, awaiting review (stream.core.holds)
    held_for: str | None = None  # the rule of its latest hold
    expiry_days: int | None = None  # days an AVAILABLE reward of it lasts (offer.v5; stream.core.expiry); None: forever
    notice_days: int | None = None  # the notice before that expiry; None: none
    sponsor_id: str | None = None  # the offer's merchant sponsor at the purchase (offer.v6); None: the bank's budget

    def __post_init__(self) -> None:
        if not self.basis_currency:
            self.basis_currency = self.currency


class Refusal(msgspec.Struct, kw_only=True, gc=False):
    """Why a purchase earns nothing, kept so its clearings follow the decision; only a refusal for
    the amount may be overturned, under the ``near`` offers, at the purchase's time and place."""

    reason: str
    detail: str
    near: tuple[str, ...] = ()
    at_ms: int = 0
    timezone: str | None = None


class Flag(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Why a purchase's reward is held when it would become available (an abuse rule and its
    figures, ``stream.core.holds``), or, ``released``, that operations reviewed it: never held again."""

    rule: str
    detail: str
    released: bool = False


UNKNOWN_DUE = -1


class Txn(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """One purchase of the account, by its transaction ref."""

    status: str  # authorized | clearing | cleared | expired
    currency: str  # the billing currency
    authorized_basis: int = 0
    cleared_basis: int = 0
    refunded_basis: int = 0
    force_post: bool = False
    # A tuple, not a list: a tuple of records outside the garbage collector leaves its scans too (a list is
    # scanned in every full collection; a worker caches hundreds of thousands of transactions).
    shares: tuple[Share, ...] = ()
    refused: Refusal | None = None
    expires_at_ms: int | None = None  # when pending cashback of an uncleared purchase expires
    events: dict[str, str] = msgspec.field(default_factory=dict)  # every event id of its life: fingerprint
    last_ms: int | None = None  # the time of its latest event
    # When something of it next falls due (stream.core.lifecycle), kept so that the account's next
    # due time does not recompute every transaction's; UNKNOWN_DUE (stored before it was kept) is
    # computed when read.
    due_ms: int | None = -1
    merchant_id: str = ""  # where it was bought ("" when stored before it was kept)
    hold: Flag | None = None  # a flag of the purchase itself (a burst, a merchant), or its review


class Recent(msgspec.Struct, array_like=True, gc=False):
    """A recent event: its fingerprint and the entries it produced (re-emitted on a redelivery)."""

    fingerprint: str
    entries: tuple[Entry, ...]


class Loose(msgspec.Struct, array_like=True, gc=False):
    """An event with no transaction to keep its id (a refund of a purchase never seen, a declined
    authorisation)."""

    fingerprint: str
    occurred_ms: int


class MerchantWatch(msgspec.Struct, array_like=True, gc=False):
    """A merchant the cross-account scan flagged for this account: its purchases there until
    ``until_ms`` are flagged, with the scan's figures."""

    until_ms: int
    detail: str


class Watch(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """What the per-account abuse rules remember (``stream.core.holds``), each bounded by its time
    window and a count."""

    refunds: list[tuple[int, str]] = msgspec.field(default_factory=list)  # (time, ref) of rewarded purchases refunded
    small: list[tuple[int, str, str]] = msgspec.field(default_factory=list)  # (time, merchant, ref) of small purchases
    merchants: dict[str, MerchantWatch] = msgspec.field(default_factory=dict)  # flagged by the scan, until when
    rewarded: dict[int, int] = msgspec.field(default_factory=dict)  # UTC day: purchases first confirmed that day


class Lot(msgspec.Struct, array_like=True, gc=False):
    """Points or store credit of one offer that became AVAILABLE on one UTC day and will expire
    together (``stream.core.expiry``): what is left of it, when it expires and when the customer
    is to be told. ``ref``: the purchase that opened it, ``count`` how many purchases it holds,
    ``noticed`` whether the customer was told (``stream.core.notices``)."""

    offer_id: str
    version: int
    reward_kind: str  # POINTS or STORE_CREDIT
    unit: str  # PTS or the ISO 4217 currency
    amount: int  # left, > 0 (0 once redeemed whole: kept until its expiry for a refund to take back)
    available_ms: int  # when its first reward became available
    expires_ms: int  # the end of the UTC day its period ends on
    notice_ms: int | None  # when the customer is to be told (None: no notice)
    ref: str
    count: int = 1
    noticed: bool = False  # the expiry notice was made (sent once: a lot stored before it was kept reads False)
    # what the customer redeemed of it (stream.core.redemptions): no longer AVAILABLE, never expired, and taken
    # back (AVAILABLE going negative) by a refund of its purchase like any spent reward; 0 in a lot stored before
    redeemed: int = 0


class Payout(msgspec.Struct, array_like=True, gc=False):
    """A payout the account asked of the bank's core banking system (``stream.core.payouts``): its
    cash amount and currency, the run that made it, when, and its answer so far (``REQUESTED``,
    then ``CONFIRMED`` or ``REJECTED``; the first answer stands)."""

    amount: int  # minor units, > 0
    currency: str
    run_id: str
    requested_ms: int
    status: str = "REQUESTED"
    answered_by: str = ""  # the event id of its answer (a redelivered confirmation tells the customer again)


class AccountState(msgspec.Struct, kw_only=True, dict=True):
    """One account's state. ``dict=True``: the engine keeps an index beside it
    (``stream.core.account_index``), an undeclared attribute never encoded, compared or copied."""

    recent: dict[str, Recent] = msgspec.field(default_factory=dict)  # the last events, oldest first
    txns: dict[str, Txn] = msgspec.field(default_factory=dict)
    loose: dict[str, Loose] = msgspec.field(default_factory=dict)
    caps: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)  # limits key: period: held
    carry: dict[str, int] = msgspec.field(default_factory=dict)  # "offer_id:UNIT": 1/10,000ths of a minor unit
    due_ms: int | None = None  # the earliest expiry or end of a return window (stream.core.lifecycle)
    clock_ms: int | None = None  # the latest event time of the account
    watch: Watch | None = None  # what the abuse rules remember (None: nothing)
    lots: list[Lot] = msgspec.field(default_factory=list)  # unused points and store credit that expire, oldest first
    # The AVAILABLE book per "<reward kind>:<unit>" ("CASH:EUR"), kept by every entry into or out of it
    # (``AccountStep.entry``); a key at 0 is dropped. None: not known, a state stored before it was kept
    # (never paid from: ``stream.core.payouts``; opened from the ledger by an OPEN_WALLET instruction).
    wallet: dict[str, int] | None = None
    # The clock offset of the latest tick whose internal events changed the account: set by the worker
    # (stream.matcher), carried by the engine, which never reads it. A tick read again at or below it
    # re-sends those events' entries (a crash may have kept them from the accruals topic).
    ticked: int | None = None
    payouts: dict[str, Payout] = msgspec.field(default_factory=dict)  # by payout id: open, then the last answered


def copy_txn(txn: Txn) -> Txn:
    """A transaction to change: its shares copied too (their amounts change in place)."""
    return msgspec.structs.replace(txn, shares=tuple(msgspec.structs.replace(share) for share in txn.shares))


def state_from_plain(plain: dict[str, Any]) -> AccountState:
    """A state from its JSON shape (how workers stored it before these records): recent events
    under ``recent`` or, older still, ``seen``; anything an older version lacked as its default."""
    plain = dict(plain)
    if "recent" not in plain and "seen" in plain:
        plain["recent"] = plain.pop("seen")
    return msgspec.convert(plain, AccountState, strict=False)
