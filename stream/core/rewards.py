"""How much one offer pays for one purchase: the share of a transaction an offer holds, its amounts,
the explanation line, and cap periods. Pure functions over the share records of ``stream.core.state``.

Exact amounts are integers in 1/10,000ths of the reward's minor unit (``EXACT_SCALE``), so a rate in
basis points, points per unit and a carried remainder add up without rounding; only the final
amount is rounded, as the offer names (points always down).
"""

from __future__ import annotations

import functools
from datetime import date, datetime, timedelta
from typing import Literal

import msgspec

from stream.core.eligibility import AccountProfile, LocalTime, best_tier
from stream.core.events import CardEvent
from stream.core.money import EXACT_SCALE, Rounding, format_exact, format_minor, points_exact, round_exact
from stream.core.offer_terms import CapPeriod
from stream.core.offers import Offer
from stream.core.state import Share


def new_share(offer: Offer, event: CardEvent, profile: AccountProfile, local: LocalTime) -> Share:
    rate_bps, tier = best_tier(offer, profile)
    method = "fixed" if offer.fixed_reward_minor is not None else "points" if offer.points_per_unit is not None else "rate"
    local_matters = bool(offer.days_of_week or offer.hours or (offer.cap and offer.cap.period is not CapPeriod.CAMPAIGN))
    return Share(
        offer_id=offer.offer_id,
        version=offer.version,
        method=method,
        rate_bps=rate_bps or 0,
        tier=tier,
        boost=None if offer.boost is None else (offer.boost.threshold_minor, offer.boost.rate_bps),
        fixed_minor=offer.fixed_reward_minor,
        points_per_unit=offer.points_per_unit,
        rounding=offer.rounding._value_,  # the enums' values (``_value_``: ``value`` is a slower property)
        reward_kind=offer.reward_kind._value_,
        charity_id=offer.charity_id,
        max_reward_minor=offer.max_reward_per_txn_minor,
        pending_days=offer.pending_days,
        accrue_on=offer.accrue_on._value_,
        currency=offer.reward_unit(event.billing_currency),  # the unit of every amount below
        basis_currency=event.billing_currency,
        cap=None if offer.cap is None else (offer.cap.period._value_, offer.cap.amount_minor),
        cap_period=None if offer.cap is None else period_key(offer.cap.period, local.at),
        budget=offer.budget_minor,
        limits_key=offer.limits_key or offer.offer_id,  # money caps and budgets are kept per currency
        place=local.note if local_matters else "",
        expiry_days=offer.available_expiry_days,
        notice_days=offer.expiry_notice_days,
        sponsor_id=offer.sponsor_id,
    )


_ROUNDINGS = {rounding.value: rounding for rounding in Rounding}


class Amount(msgspec.Struct, frozen=True, gc=False):  # a record: made several times per event
    """One computation: ``reward_minor`` from ``exact`` plus ``carried_in``, ``carried_out`` left."""

    reward_minor: int
    exact: int
    rate_bps: int  # the rate used (boost included); 0 for fixed and points rewards
    carried_in: int = 0
    carried_out: int = 0


def compute(share: Share, basis_minor: int, size_minor: int, carried_in: int = 0) -> Amount:
    """What ``basis_minor`` earns, the boost judged on the purchase's ``size_minor``; a fixed reward
    is the whole reward of a purchase (any basis above zero)."""
    method = share.method
    rate_bps = 0
    if method == "fixed":
        exact = (share.fixed_minor or 0) * EXACT_SCALE if basis_minor > 0 else 0
        return Amount(exact // EXACT_SCALE, exact, 0)
    if method == "points":
        exact = points_exact(basis_minor, share.points_per_unit or 0, share.basis_currency)
    else:
        rate_bps = share.rate_bps
        boost = share.boost
        if boost is not None and size_minor >= boost[0]:
            rate_bps = max(rate_bps, boost[1])
        exact = basis_minor * rate_bps
    if share.rounding == "down" and exact >= 0 and exact + carried_in >= 0:  # round_exact's most common case
        reward, remainder = divmod(exact + carried_in, EXACT_SCALE)
        return Amount(reward, exact, rate_bps, carried_in, remainder)
    result = round_exact(exact, _ROUNDINGS.get(share.rounding) or Rounding(share.rounding), carried_in)
    return Amount(result.reward_minor, exact, rate_bps, carried_in, result.carried_remainder)


def at_most_per_purchase(share: Share, reward_minor: int, already_minor: int = 0) -> int:
    if share.max_reward_minor is None:
        return reward_minor
    return min(reward_minor, max(0, share.max_reward_minor - already_minor))


def describe(share: Share, basis_minor: int, amount: Amount, paid_minor: int, limit: str = "") -> str:
    """The arithmetic of one amount, e.g. ``5.00% of 100.00 EUR = 5.00 EUR (rounded down)``."""
    unit, basis = share.currency, format_minor(basis_minor, share.basis_currency)
    method = share.method
    if method == "fixed":
        head = f"fixed {format_minor(share.fixed_minor or 0, unit)} per purchase of {basis}"
    elif method == "points":
        head = f"{share.points_per_unit} points per {share.basis_currency} of {basis}"
    else:
        rate = amount.rate_bps
        head = f"{rate // 100}.{rate % 100:02d}%"
        if share.boost is not None and rate == share.boost[1] and rate != share.rate_bps:
            head += f" (boost: purchase of at least {format_minor(share.boost[0], share.basis_currency)})"
        elif share.tier is not None:
            head += f" (tier {share.tier})"
        head += f" of {basis}"
    notes = [] if method == "fixed" else [f"rounded {share.rounding.replace('_', ' ')}"]
    if amount.carried_in or amount.carried_out:
        notes.append(f"exactly {format_exact(amount.exact, unit)}")
    if amount.carried_in:
        notes.append(f"{format_exact(amount.carried_in, unit)} carried in")
    if amount.carried_out:
        notes.append(f"{format_exact(amount.carried_out, unit)} carried forward")
    if share.max_reward_minor is not None:
        notes.append(f"at most {format_minor(share.max_reward_minor, unit)}")
    if limit:
        notes.append(limit)
    if share.place:
        notes.append(f"judged {share.place}")
    text = f"{head} = {format_minor(paid_minor, unit)}"
    return f"{text} ({', '.join(notes)})" if notes else text


# --- cap periods ---------------------------------------------------------------------------------


def period_key(period: CapPeriod | str, local: datetime) -> str:
    """The cap period a purchase at local time ``local`` falls in: ``2026-12-05`` (day),
    ``2026-W49`` (ISO week), ``2026-12`` (month), ``campaign``."""
    period = CapPeriod(period)
    if period is CapPeriod.DAY:
        return local.date().isoformat()
    if period is CapPeriod.WEEK:
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    if period is CapPeriod.MONTH:
        return f"{local.year:04d}-{local.month:02d}"
    return "campaign"


def period_of_key(key: str) -> CapPeriod:
    if key == "campaign":
        return CapPeriod.CAMPAIGN
    if "W" in key:
        return CapPeriod.WEEK
    return CapPeriod.DAY if len(key) == 10 else CapPeriod.MONTH


@functools.lru_cache(maxsize=4096)
def period_end(key: str) -> date | None:
    """The first local day after the period; None for the campaign (it never ends by itself)."""
    period = period_of_key(key)
    if period is CapPeriod.DAY:
        return date.fromisoformat(key) + timedelta(days=1)
    if period is CapPeriod.WEEK:
        year, week = key.split("-W")
        return date.fromisocalendar(int(year), int(week), 1) + timedelta(days=7)
    if period is CapPeriod.MONTH:
        year_number, month = (int(part) for part in key.split("-"))
        return date(year_number + month // 12, month % 12 + 1, 1)
    return None


def period_over(key: str, period: CapPeriod, today: date, grace_days: int) -> bool:
    """True when usage of period ``key`` is no longer needed: another kind of period than the
    offer's cap now, or ended more than ``grace_days`` before ``today`` (a late clearing of a
    purchase in the period can still arrive within the authorisation expiry)."""
    kept = period_kept_until(key, period.value, grace_days)
    return kept is True or (kept is not None and kept < today)


@functools.lru_cache(maxsize=4096)
def period_kept_until(key: str, period: str, grace_days: int) -> date | Literal[True] | None:
    """``period_over`` of period ``key`` for a cap of ``period`` (its value) without the day: True
    (over whatever the day), None (never over), or the last day it is not over (over once
    ``today`` is after it). The same for every purchase: made once per period."""
    if period_of_key(key).value != period:
        return True
    end = period_end(key)
    return None if end is None else end + timedelta(days=grace_days)
