"""An offer given as a mapping (a YAML file's entry, the offers topic's Avro record), validated into
an ``Offer``: every error names the offer and the field (``OfferError``). The fields' own small
parsers (tiers, boost, cap, hours, prices) are in ``stream.core.offer_terms``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from typing import Any

from stream.core.holdout import MAX_HOLDOUT_BPS
from stream.core.money import Rounding, is_known_currency
from stream.core.offer_terms import (
    OfferError,
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
from stream.core.offers import AccrueOn, MccSet, Offer, RewardKind

_FIELDS = set(Offer.__slots__) - {"limits_key"}
_CHANNELS = {"IN_STORE", "ONLINE", "CONTACTLESS", "RECURRING"}
_AMOUNT_FIELDS = ("rate_bps", "fixed_reward_minor", "points_per_unit")
MAX_POINTS_PER_UNIT = 10_000
# A merchant sponsor's id: it names the sponsor in statements' paths (/v1/operations/sponsors/{id}/...).
SPONSOR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
BANK_SPONSOR = "bank"  # the sponsor id statements give the bank's own budget (entries with no sponsor_id)
# The sponsor of a MERCHANT offer published before offer.v6 (which had no sponsor_id): its rewards are
# billed to nobody known until it is republished with its sponsor, and its statement shows what that cost.
UNATTRIBUTED_SPONSOR = "unattributed"
_RESERVED_SPONSORS = (BANK_SPONSOR, UNATTRIBUTED_SPONSOR)
MAX_EXPIRY_DAYS = 3660  # ten years: a longer period is a typo (a balance is not kept longer)


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


def _sponsor_id(value: Any, sponsor: str, offer_id: str, published: bool) -> str | None:
    """Who funds the offer (offer.v6): a MERCHANT offer names its merchant sponsor, billed for its rewards
    (stream.store.sponsor_statements); a BANK offer names none (its rewards are the bank's own budget)."""
    if published and sponsor == "MERCHANT" and value is None:
        return UNATTRIBUTED_SPONSOR  # published before offer.v6: kept live, see parse_published_offer
    if sponsor == "BANK":
        if value is not None:
            raise OfferError(offer_id, "sponsor_id", "only for sponsor MERCHANT (a BANK offer is the bank's own budget)")
        return None
    if value is None:
        raise OfferError(offer_id, "sponsor_id", "required when sponsor is MERCHANT (the merchant sponsor that funds it)")
    if not isinstance(value, str) or not SPONSOR_ID.fullmatch(value):
        raise OfferError(offer_id, "sponsor_id", f"{value!r} is not 1 to 64 letters, digits, '.', '_' or '-'")
    if value.lower() in _RESERVED_SPONSORS:
        reserved_for = "the bank's own budget" if value.lower() == BANK_SPONSOR else "merchant offers published without one"
        raise OfferError(offer_id, "sponsor_id", f"{value!r} is reserved for {reserved_for}")
    return value


def parse_published_offer(raw: Mapping[str, Any]) -> Offer:
    """An offer read back from the offers topic. As parse_offer, except for a MERCHANT offer published before
    offer.v6, which could not name its sponsor: it stays live (the customers it promised cashback keep
    earning it across the workers' upgrade) and its rewards are booked to the sponsor ``unattributed``
    until it is republished with its ``sponsor_id``."""
    return parse_offer(raw, published=True)


def parse_offer(raw: Mapping[str, Any], *, published: bool = False) -> Offer:
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
    sponsor_id = _sponsor_id(raw.get("sponsor_id"), sponsor, offer_id, published)
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
        holdout_bps=integer(raw, "holdout_bps", offer_id, 0) or 0,  # null: none
        available_expiry_days=integer(raw, "available_expiry_days", offer_id, None, minimum=1),
        expiry_notice_days=integer(raw, "expiry_notice_days", offer_id, None, minimum=1),
        sponsor_id=sponsor_id,
    )
    if offer.holdout_bps > MAX_HOLDOUT_BPS:
        raise OfferError(offer_id, "holdout_bps", f"{offer.holdout_bps} is above {MAX_HOLDOUT_BPS} (half the accounts held out)")
    if offer.points_per_unit is not None and offer.points_per_unit > MAX_POINTS_PER_UNIT:
        raise OfferError(offer_id, "points_per_unit", f"{offer.points_per_unit} is above {MAX_POINTS_PER_UNIT}")
    _check_amounts(offer)
    _check_prices(offer)
    _check_expiry(offer)
    return offer


def _check_expiry(offer: Offer) -> None:
    """Only points and store credit expire (cash is the customer's money, a charity reward is given
    away), within ``MAX_EXPIRY_DAYS``; a notice comes before the expiry, never without one."""
    days, notice = offer.available_expiry_days, offer.expiry_notice_days
    if days is not None:
        if offer.reward_kind not in (RewardKind.POINTS, RewardKind.STORE_CREDIT):
            why = f"only POINTS and STORE_CREDIT rewards expire, not {offer.reward_kind.value}"
            raise OfferError(offer.offer_id, "available_expiry_days", why)
        if days > MAX_EXPIRY_DAYS:
            raise OfferError(offer.offer_id, "available_expiry_days", f"{days} is above {MAX_EXPIRY_DAYS} (ten years)")
    if notice is not None:
        if days is None:
            raise OfferError(offer.offer_id, "expiry_notice_days", "requires available_expiry_days (a notice of no expiry)")
        if notice >= days:
            raise OfferError(offer.offer_id, "expiry_notice_days", f"{notice} must be below available_expiry_days ({days})")


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
