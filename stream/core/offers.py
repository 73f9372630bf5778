"""Offers: the model, validation of an offer given as a mapping (YAML files are read by
``stream.offer_admin``), and the snapshot the rules engine reads.

Every error names the offer and the field. The Avro record on the offers topic (``offer.v2.avsc``)
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
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time
from typing import Any

from stream.core.money import POINTS_UNIT, Rounding, is_known_currency
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
    boolean,
    enumerated,
    integer,
    parse_boost,
    parse_cap,
    parse_days,
    parse_hours,
    parse_prices,
    parse_tiers,
    rate,
    string_list,
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
    "parse_offer",
]

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
        if mcc in self.codes:
            return True
        number = int(mcc)
        return any(low <= number <= high for low, high in self.ranges)

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
        }


_FIELDS = set(Offer.__slots__) - {"limits_key"}
_CHANNELS = {"IN_STORE", "ONLINE", "CONTACTLESS", "RECURRING"}
_AMOUNT_FIELDS = ("rate_bps", "fixed_reward_minor", "points_per_unit")
MAX_POINTS_PER_UNIT = 10_000


def _timestamp(value: Any, offer_id: str, field_name: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time.min, tzinfo=UTC)
    if isinstance(value, int):  # epoch milliseconds, as Avro may hand it over
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    if isinstance(value, str):
        try:
            return _timestamp(datetime.fromisoformat(value), offer_id, field_name)
        except ValueError:
            pass
    raise OfferError(offer_id, field_name, f"{value!r} is not a date or an ISO 8601 timestamp")


def _enum(kind: type[enum.Enum], raw: Mapping[str, Any], name: str, offer_id: str, default: enum.Enum) -> Any:
    return enumerated(kind, raw.get(name, default.value), offer_id, name, lower=kind is Rounding)


def _check_amounts(offer: Offer) -> None:
    """How much: exactly one way to compute the reward, and the fields each way needs."""
    offer_id = offer.offer_id
    given = [name for name in _AMOUNT_FIELDS if getattr(offer, name) is not None]
    if not given:
        raise OfferError(offer_id, "rate_bps", "required (basis points: 500 is 5%), or fixed_reward_minor, or points_per_unit")
    if len(given) > 1:
        raise OfferError(offer_id, given[1], f"give only one of {', '.join(_AMOUNT_FIELDS)} ({given[0]} is given)")
    if offer.points_per_unit is not None and not offer.is_points:
        raise OfferError(offer_id, "points_per_unit", "only for reward_kind POINTS")
    if offer.is_points and offer.rate_bps is not None:
        raise OfferError(offer_id, "rate_bps", "a POINTS offer earns points_per_unit or fixed_reward_minor, not a rate")
    if offer.is_points and offer.rounding is not Rounding.DOWN:
        raise OfferError(offer_id, "rounding", "points are whole and always rounded down")
    if offer.rate_bps is None:
        for name in ("tiers", "boost"):
            if getattr(offer, name):
                raise OfferError(offer_id, name, "only for offers with a rate_bps")
    if offer.boost is not None and offer.rate_bps is not None and offer.boost.rate_bps <= offer.rate_bps:
        raise OfferError(offer_id, "boost.rate_bps", f"must be above the offer's rate_bps ({offer.rate_bps})")
    # An amount of money means nothing without its currency (points need it to define a unit of spend).
    needs_currency = [
        ("points_per_unit", offer.points_per_unit is not None),
        ("fixed_reward_minor", offer.fixed_reward_minor is not None and not offer.is_points),
        ("cap", offer.cap is not None and not offer.is_points),
        ("budget_minor", offer.budget_minor is not None),
    ]
    for name, needed in needs_currency:
        if needed and offer.currency is None:
            raise OfferError(offer_id, "currency", f"required when {name} is set")


def parse_offer(raw: Mapping[str, Any]) -> Offer:
    """Validate one offer given as a mapping (YAML or Avro record); raise OfferError naming the field."""
    if not isinstance(raw, Mapping):
        raise OfferError("?", "offer", "each offer must be a mapping")
    offer_id = raw.get("offer_id")
    if not isinstance(offer_id, str) or not offer_id.strip():
        raise OfferError(str(offer_id), "offer_id", "required, a non-empty string")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise OfferError(offer_id, sorted(map(str, unknown))[0], "unknown field")
    if not isinstance(raw.get("name", offer_id), str):
        raise OfferError(offer_id, "name", "must be a string")
    channels = frozenset(str(c).upper() for c in raw.get("channels") or ())
    if channels - _CHANNELS:
        raise OfferError(offer_id, "channels", f"unknown channel {sorted(channels - _CHANNELS)[0]!r}")
    currency = raw.get("currency")
    if currency is not None and not is_known_currency(currency):
        raise OfferError(offer_id, "currency", f"{currency!r} is not an ISO 4217 currency")
    reward_kind = _enum(RewardKind, raw, "reward_kind", offer_id, RewardKind.CASH)
    charity_id = raw.get("charity_id")
    if reward_kind is RewardKind.CHARITY and not charity_id:
        raise OfferError(offer_id, "charity_id", "required when reward_kind is CHARITY")
    valid_from = _timestamp(raw.get("valid_from"), offer_id, "valid_from")
    valid_to = _timestamp(raw.get("valid_to"), offer_id, "valid_to")
    if valid_from and valid_to and valid_to <= valid_from:
        raise OfferError(offer_id, "valid_to", "must be after valid_from")
    sponsor = str(raw.get("sponsor", "BANK")).upper()
    if sponsor not in ("BANK", "MERCHANT"):
        raise OfferError(offer_id, "sponsor", f"{sponsor!r} is not BANK or MERCHANT")
    offer = Offer(
        offer_id=offer_id,
        version=integer(raw, "version", offer_id, 1, minimum=1),
        name=raw.get("name", offer_id),
        rate_bps=rate(raw, "rate_bps", offer_id),
        sponsor=sponsor,
        reward_kind=reward_kind,
        charity_id=charity_id,
        mccs=MccSet.parse(raw.get("mccs") or (), offer_id, "mccs"),
        excluded_mccs=MccSet.parse(raw.get("excluded_mccs") or (), offer_id, "excluded_mccs"),
        merchant_ids=frozenset(str(m) for m in raw.get("merchant_ids") or ()),
        channels=channels,
        merchant_countries=frozenset(str(c).upper() for c in raw.get("merchant_countries") or ()),
        currency=currency,
        valid_from=valid_from,
        valid_to=valid_to,
        rounding=_enum(Rounding, raw, "rounding", offer_id, Rounding.DOWN),
        min_spend_minor=integer(raw, "min_spend_minor", offer_id, 0),
        max_reward_per_txn_minor=integer(raw, "max_reward_per_txn_minor", offer_id, None),
        pending_days=integer(raw, "pending_days", offer_id, 30),
        auth_expiry_days=integer(raw, "auth_expiry_days", offer_id, 30),
        accrue_on=_enum(AccrueOn, raw, "accrue_on", offer_id, AccrueOn.AUTHORIZATION),
        stackable=boolean(raw, "stackable", offer_id, False),
        segments=frozenset(string_list(raw, "segments", offer_id)),
        tiers=parse_tiers(raw, offer_id),
        requires_activation=boolean(raw, "requires_activation", offer_id, False),
        days_of_week=parse_days(raw, offer_id),
        hours=parse_hours(raw, offer_id),
        fixed_reward_minor=integer(raw, "fixed_reward_minor", offer_id, None, minimum=1),
        points_per_unit=integer(raw, "points_per_unit", offer_id, None, minimum=1),
        boost=parse_boost(raw, offer_id),
        cap=parse_cap(raw, offer_id),
        budget_minor=integer(raw, "budget_minor", offer_id, None),
        prices=parse_prices(raw, offer_id, is_known_currency),
    )
    if offer.points_per_unit is not None and offer.points_per_unit > MAX_POINTS_PER_UNIT:
        raise OfferError(offer_id, "points_per_unit", f"{offer.points_per_unit} is above {MAX_POINTS_PER_UNIT}")
    _check_amounts(offer)
    _check_prices(offer)
    return offer


def _check_prices(offer: Offer) -> None:
    """Each price gives exactly the money amounts the offer uses, so no amount is ever read in the
    wrong currency."""
    if not offer.prices:
        return
    if offer.currency is None:
        raise OfferError(offer.offer_id, "currency", "required when prices is set (the currency the offer's own amounts are in)")
    money = not offer.is_points
    needed = {
        "min_spend_minor": offer.min_spend_minor > 0,
        "max_reward_per_txn_minor": money and offer.max_reward_per_txn_minor is not None,
        "fixed_reward_minor": money and offer.fixed_reward_minor is not None,
        "points_per_unit": offer.points_per_unit is not None,
        "boost_threshold_minor": offer.boost is not None,
        "cap_amount_minor": money and offer.cap is not None,
        "budget_minor": money and offer.budget_minor is not None,
    }
    for currency, price in offer.prices:
        if currency == offer.currency:
            raise OfferError(offer.offer_id, f"prices.{currency}", "is the offer's own currency: its amounts are the offer's")
        given = set(price.given())
        for name, need in needed.items():
            if need and name not in given:
                raise OfferError(
                    offer.offer_id, f"prices.{currency}.{name}", "required: the offer has this amount in its own currency"
                )
            if name in given and not need:
                why = (
                    "in points, the same in every currency"
                    if offer.is_points and name != "min_spend_minor"
                    else "the offer has no such amount"
                )
                raise OfferError(offer.offer_id, f"prices.{currency}.{name}", why)


@dataclass(frozen=True, slots=True)
class OfferBook:
    """An immutable snapshot of all live offers, as every worker holds it."""

    offers: tuple[Offer, ...] = ()

    @classmethod
    def of(cls, offers: Iterable[Offer]) -> OfferBook:
        return cls(tuple(sorted(offers, key=lambda o: o.offer_id)))

    def get(self, offer_id: str) -> Offer | None:
        return next((o for o in self.offers if o.offer_id == offer_id), None)
