"""Offers: the model and the snapshot the rules engine reads (an offer given as a mapping is
validated by ``stream.core.offer_parsing``; YAML files are read by ``stream.offer_admin``).

Every error names the offer and the field. The Avro record on the offers topic (``offer.v5.avsc``)
and the YAML file use the same field names; every field added since ``offer.avsc`` has a default,
so an offer written by the first version still parses.

Amounts of reward (``fixed_reward_minor``, ``max_reward_per_txn_minor``, ``cap.amount_minor``,
``budget_minor``) are in the reward's unit: the offer's ``currency`` for cash, store credit and
charity, whole points (``PTS``) for points. Amounts of spending (``min_spend_minor``,
``boost.threshold_minor``) are in the purchase's billing currency.

**Priced in every currency.** An offer with a ``currency`` is priced in it; ``prices`` prices it in
more currencies, each with every money amount the offer uses (``Offer.priced``). A purchase billed
in a currency the offer is not priced in earns nothing under it, with the reason
``currency_not_priced``. An offer without a ``currency`` keeps its first meaning: its amounts are
minor units of whatever currency the purchase is billed in. Caps and campaign budgets in money are
kept per currency (no exchange rate is assumed; keyed ``<offer_id>@<currency>`` outside the
offer's own currency): ``budget_minor`` for the offer's currency, each price's ``budget_minor``
for its own. Points are one unit everywhere: a points offer's caps, fixed reward
and budget are the same in every currency; only its ``points_per_unit`` and spending amounts are
priced.

**Holdout groups** (``offer.v4``): ``holdout_bps`` (0..5,000, default 0) holds out that share of
the accounts, chosen by a keyed hash of account and offer (``stream.core.holdout``); a held-out
account earns nothing from the offer, recorded with the reason ``holdout``
(``stream.core.eligibility``, ``stream.core.judgement``).

**Expiry of unused rewards** (``offer.v5``): ``available_expiry_days`` (POINTS and STORE_CREDIT
only) makes a reward left AVAILABLE expire at the end of the UTC day that many days after it became
available, first earned first expired; ``expiry_notice_days`` records when the customer is to be
told before (``stream.core.expiry``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from stream.core.money import POINTS_UNIT, Rounding
from stream.core.offer_terms import (
    DAYS_OF_WEEK,
    PRICE_FIELDS,
    Boost,
    Cap,
    CapPeriod,
    Hours,
    OfferError,
    Price,
    Tier,
)

__all__ = [
    "ALWAYS_EXCLUDED_MCCS",
    "AccrueOn",
    "Boost",
    "Cap",
    "CapPeriod",
    "Hours",
    "MccSet",
    "Offer",
    "OfferBook",
    "OfferError",
    "RewardKind",
    "Tier",
]

_MCC_CODES = 10_000

# Cash, quasi-cash, money transfer and gambling never earn cashback, whatever an offer says.
ALWAYS_EXCLUDED_MCCS = frozenset({"4829", "6010", "6011", "6050", "6051", "6540", "7995"})


class RewardKind(str, enum.Enum):
    CASH = "CASH"
    POINTS = "POINTS"
    STORE_CREDIT = "STORE_CREDIT"
    CHARITY = "CHARITY"


class AccrueOn(str, enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    CLEARING = "CLEARING"


@dataclass(frozen=True, slots=True)
class MccSet:
    """Single codes and inclusive ranges; empty means every code."""

    codes: frozenset[str] = frozenset()
    ranges: tuple[tuple[int, int], ...] = ()
    # every code the set holds, ranges spelt out (at most the 10,000 four-digit codes): one lookup
    # per purchase instead of a parse and a scan of the ranges
    every: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        spelt = (f"{number:04d}" for low, high in self.ranges for number in range(low, high + 1))
        object.__setattr__(self, "every", self.codes.union(spelt))

    @classmethod
    def parse(cls, items: Iterable[str], offer_id: str, field_name: str) -> MccSet:
        codes: set[str] = set()
        ranges: list[tuple[int, int]] = []
        for item in items:
            text = str(item).strip()
            low, dash, high = text.partition("-")
            if not (low.isdigit() and len(low) == 4 and (not dash or (high.isdigit() and len(high) == 4))):
                raise OfferError(offer_id, field_name, f"{text!r} is not a four-digit MCC or a range like 5811-5814")
            if dash:
                if int(low) > int(high):
                    raise OfferError(offer_id, field_name, f"range {text!r} is reversed")
                ranges.append((int(low), int(high)))
            else:
                codes.add(low)
        return cls(frozenset(codes), tuple(ranges))

    def __contains__(self, mcc: str) -> bool:
        return mcc in self.every

    @property
    def empty(self) -> bool:
        return not self.codes and not self.ranges

    def items(self) -> list[str]:
        return sorted(self.codes) + [f"{low:04d}-{high:04d}" for low, high in self.ranges]


@dataclass(frozen=True, slots=True)
class Offer:
    offer_id: str
    version: int
    name: str
    rate_bps: int | None = None  # exactly one of rate_bps, fixed_reward_minor, points_per_unit
    sponsor: str = "BANK"
    reward_kind: RewardKind = RewardKind.CASH
    charity_id: str | None = None
    mccs: MccSet = field(default_factory=MccSet)
    excluded_mccs: MccSet = field(default_factory=MccSet)
    merchant_ids: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    merchant_countries: frozenset[str] = frozenset()
    currency: str | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    rounding: Rounding = Rounding.DOWN
    min_spend_minor: int = 0
    max_reward_per_txn_minor: int | None = None
    pending_days: int = 30
    auth_expiry_days: int = 30
    accrue_on: AccrueOn = AccrueOn.AUTHORIZATION
    stackable: bool = False
    # --- since offer.v2 ---
    segments: frozenset[str] = frozenset()  # empty: every account
    tiers: tuple[Tier, ...] = ()
    requires_activation: bool = False
    days_of_week: frozenset[str] = frozenset()  # MON..SUN in the merchant's local time; empty: every day
    hours: Hours | None = None
    fixed_reward_minor: int | None = None
    points_per_unit: int | None = None
    boost: Boost | None = None
    cap: Cap | None = None
    budget_minor: int | None = None
    # --- since offer.v3 ---
    prices: tuple[tuple[str, Price], ...] = ()  # (currency, its amounts), sorted
    # --- since offer.v4 ---
    holdout_bps: int = 0  # the share of accounts held out of the offer (stream.core.holdout); 0: none
    # --- since offer.v5 ---
    available_expiry_days: int | None = None  # POINTS and STORE_CREDIT left AVAILABLE expire (stream.core.expiry); None: never
    expiry_notice_days: int | None = None  # the notice before an expiry (kept with each lot); None: none
    # --- since offer.v6 ---
    sponsor_id: str | None = None  # the merchant sponsor funding a MERCHANT offer; None: the bank's budget
    # Derived, never loaded: the key of the caps and budget this (priced) offer counts against.
    limits_key: str | None = None

    @property
    def is_points(self) -> bool:
        return self.reward_kind is RewardKind.POINTS

    def priced(self, billing_currency: str) -> Offer | None:
        """This offer as it applies to a purchase billed in ``billing_currency``: its amounts in
        that currency, or None when it is not priced in it."""
        if self.currency is None or billing_currency == self.currency:
            return self
        price = next((p for currency, p in self.prices if currency == billing_currency), None)
        if price is None:
            return None
        money = not self.is_points  # a points offer's rewards, caps and budget are in points everywhere
        return replace(
            self,
            currency=billing_currency,
            min_spend_minor=price.min_spend_minor or 0,
            max_reward_per_txn_minor=price.max_reward_per_txn_minor if money else self.max_reward_per_txn_minor,
            fixed_reward_minor=price.fixed_reward_minor if money else self.fixed_reward_minor,
            points_per_unit=price.points_per_unit,
            boost=None if self.boost is None else Boost(price.boost_threshold_minor or 0, self.boost.rate_bps),
            cap=self.cap if self.cap is None or not money else Cap(self.cap.period, price.cap_amount_minor or 0),
            # a budget only where the offer has one (its budget lines say the same)
            budget_minor=price.budget_minor if money and self.budget_minor is not None else self.budget_minor,
            limits_key=f"{self.offer_id}@{billing_currency}" if money else None,
            prices=(),
        )

    def budget_lines(self) -> list[tuple[str, int, str]]:
        """Each campaign budget of the offer: (budget key, amount, unit). One per priced currency for
        money (kept apart: no exchange rate), one in points."""
        if self.budget_minor is None:
            return []
        if self.is_points:
            return [(self.offer_id, self.budget_minor, POINTS_UNIT)]
        assert self.currency is not None  # a money budget requires the currency (parse_offer)
        lines = [(self.offer_id, self.budget_minor, self.currency)]
        for currency, price in self.prices:
            if price.budget_minor is not None:
                lines.append((f"{self.offer_id}@{currency}", price.budget_minor, currency))
        return lines

    def reward_unit(self, billing_currency: str) -> str:
        """The unit of this offer's rewards (and of its caps and budget) for a purchase billed in
        ``billing_currency``."""
        return POINTS_UNIT if self.is_points else billing_currency

    def to_record(self) -> dict[str, Any]:
        """The Avro record published on the offers topic (newest ``offer`` schema)."""
        return {
            "offer_id": self.offer_id,
            "version": self.version,
            "name": self.name,
            "sponsor": self.sponsor,
            "reward_kind": self.reward_kind.value,
            "charity_id": self.charity_id,
            "mccs": self.mccs.items(),
            "excluded_mccs": self.excluded_mccs.items(),
            "merchant_ids": sorted(self.merchant_ids),
            "channels": sorted(self.channels),
            "merchant_countries": sorted(self.merchant_countries),
            "currency": self.currency,
            "valid_from": self.valid_from,
            "valid_to": self.valid_to,
            "rate_bps": self.rate_bps,
            "rounding": self.rounding.value,
            "min_spend_minor": self.min_spend_minor,
            "max_reward_per_txn_minor": self.max_reward_per_txn_minor,
            "pending_days": self.pending_days,
            "auth_expiry_days": self.auth_expiry_days,
            "accrue_on": self.accrue_on.value,
            "stackable": self.stackable,
            "segments": sorted(self.segments),
            "tiers": [{"segment": t.segment, "rate_bps": t.rate_bps} for t in self.tiers],
            "requires_activation": self.requires_activation,
            "days_of_week": [day for day in DAYS_OF_WEEK if day in self.days_of_week],
            "hours": None if self.hours is None else self.hours.to_record(),
            "fixed_reward_minor": self.fixed_reward_minor,
            "points_per_unit": self.points_per_unit,
            "boost": None
            if self.boost is None
            else {"threshold_minor": self.boost.threshold_minor, "rate_bps": self.boost.rate_bps},
            "cap": None if self.cap is None else {"period": self.cap.period.value, "amount_minor": self.cap.amount_minor},
            "budget_minor": self.budget_minor,
            "prices": {currency: {name: getattr(price, name) for name in PRICE_FIELDS} for currency, price in self.prices},
            "holdout_bps": self.holdout_bps,
            "available_expiry_days": self.available_expiry_days,
            "expiry_notice_days": self.expiry_notice_days,
            "sponsor_id": self.sponsor_id,
        }


@dataclass(frozen=True, slots=True)
class OfferBook:
    """An immutable snapshot of all live offers, as every worker holds it."""

    offers: tuple[Offer, ...] = ()
    # Derived, for the rules engine: each offer by id (the first listed), and each currency's
    # offers as ``Offer.priced`` prices them (None where not priced), made once per book.
    by_id: dict[str, Offer] = field(init=False, repr=False, compare=False, default_factory=dict)
    _priced: dict[str, tuple[Offer | None, ...]] = field(init=False, repr=False, compare=False, default_factory=dict)
    _by_mcc: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False, default_factory=dict)
    # whether any offer holds accounts out (else the funnel skips the holdout stage: no hash at all)
    holdouts: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        for offer in self.offers:
            self.by_id.setdefault(offer.offer_id, offer)
        object.__setattr__(self, "holdouts", any(offer.holdout_bps for offer in self.offers))

    @classmethod
    def of(cls, offers: Iterable[Offer]) -> OfferBook:
        return cls(tuple(sorted(offers, key=lambda o: o.offer_id)))

    def get(self, offer_id: str) -> Offer | None:
        return self.by_id.get(offer_id)

    def priced(self, billing_currency: str) -> tuple[Offer | None, ...]:
        """``offer.priced(billing_currency)`` of each offer, in the book's order (the same offers
        for every purchase in that currency: made once)."""
        priced = self._priced.get(billing_currency)
        if priced is None:
            priced = self._priced[billing_currency] = tuple(o.priced(billing_currency) for o in self.offers)
        return priced

    def for_mcc(self, mcc: str) -> tuple[int, ...]:
        """The positions of the offers whose MCCs admit ``mcc`` (the others cannot match a purchase
        there), in the book's order; made once per code."""
        found = self._by_mcc.get(mcc)
        if found is None:
            found = tuple(n for n, o in enumerate(self.offers) if (o.mccs.empty or mcc in o.mccs) and mcc not in o.excluded_mccs)
            if len(self._by_mcc) < _MCC_CODES:  # four digits (checked on the way in): bounded anyway
                self._by_mcc[mcc] = found
        return found
