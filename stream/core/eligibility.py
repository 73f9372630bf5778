"""Which offers a purchase can earn under: who the account is, where and when the purchase was made.

Pure. Offers pass a funnel of stages; when the last one drops out, the purchase earns nothing and
the stage names why (the closest miss): where (MCC, merchant, channel, country, validity)
``no_matching_offer``, who ``not_in_segment``, when ``outside_schedule``, activation
``not_activated``, the billing currency ``currency_not_priced`` (stream.core.offers:
``Offer.priced``), how much ``below_min_spend``. The offers a match returns are priced in the
purchase's currency. Cap and budget come after, in the engine.

**Holdout** comes last (``stream.core.holdout``): for an account in an offer's holdout group the
offer does not exist, so it never wins the stacking and then pays nothing while a lesser offer the
customer qualifies for would have paid (the customer gets what the world without the offer gives,
and the measurement compares exactly that). The held-out offers the purchase met every condition
of, the minimum spend included, are kept on the match (``held_out``): each gets a NOT_EARNED line
with the reason ``holdout``, and when nothing else pays, ``holdout`` is the purchase's reason. A
held-out offer the purchase fell short of in any way is not recorded: it would not have paid.

Local time (days of week, hours, cap periods) is the merchant's: the event's ``merchant_timezone``
(IANA, via zoneinfo); when it is missing or unknown, UTC, and the explanation says so.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

import msgspec

from stream.core.events import CardEvent
from stream.core.holdout import held_out
from stream.core.offer_terms import DAYS_OF_WEEK
from stream.core.offers import ALWAYS_EXCLUDED_MCCS, Offer, OfferBook
from stream.core.outcomes import Outcome

NON_PURCHASE_CODES = frozenset({"QUASI_CASH", "CASH_WITHDRAWAL", "REFUND"})


@dataclass(frozen=True, slots=True)
class AccountProfile:
    """What the engine knows of the account beyond its events: its segments and, per offer, when it
    activated the offer (UTC); and the language it is told things in (no part of any decision)."""

    segments: frozenset[str] = frozenset()
    activations: Mapping[str, datetime] = field(default_factory=lambda: MappingProxyType({}))
    language: str | None = None  # its notifications' language (stream.core.notices); None: the bank's default


NO_PROFILE = AccountProfile()


class LocalTime(msgspec.Struct, frozen=True, gc=False):  # a record: made for most events
    at: datetime  # the event's time in the zone below
    note: str  # how it was judged, for explanations: "in Europe/Paris", "in UTC (no merchant time zone)"


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> zoneinfo.ZoneInfo | None:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):  # unknown, or not a valid key ("../x")
        return None


def local_time(event: CardEvent) -> LocalTime:
    name = event.merchant_timezone
    zone = _zone(name) if name else None
    if zone is None:
        why = "no merchant time zone" if not name else f"merchant time zone {name!r} unknown"
        return LocalTime(event.occurred_at.astimezone(UTC), f"in UTC ({why})")
    return LocalTime(event.occurred_at.astimezone(zone), f"in {name}")


def purchase_rejection(event: CardEvent) -> Outcome | None:
    if not event.approved:
        return Outcome.DECLINED
    if event.processing_code in NON_PURCHASE_CODES:
        return Outcome.NOT_A_PURCHASE
    if event.mcc in ALWAYS_EXCLUDED_MCCS:
        return Outcome.EXCLUDED_MCC
    return None


def _where(offer: Offer, event: CardEvent) -> bool:
    at = event.occurred_at
    return (
        (offer.valid_from is None or at >= offer.valid_from)
        and (offer.valid_to is None or at < offer.valid_to)
        and (offer.mccs.empty or event.mcc in offer.mccs)
        and event.mcc not in offer.excluded_mccs
        and (not offer.merchant_ids or event.merchant_id in offer.merchant_ids)
        and (not offer.channels or event.channel in offer.channels)
        and (not offer.merchant_countries or event.merchant_country in offer.merchant_countries)
    )


def in_schedule(offer: Offer, local: LocalTime) -> bool:
    """Days are the local date's weekday; hours the local time of day (a window over midnight
    counts on the day it is entered and the day it ends alike: each minute is judged on its own)."""
    at = local.at
    if offer.days_of_week and DAYS_OF_WEEK[at.weekday()] not in offer.days_of_week:
        return False
    return offer.hours is None or at.hour * 60 + at.minute in offer.hours


def activated(offer: Offer, event: CardEvent, profile: AccountProfile) -> bool:
    if not offer.requires_activation:
        return True
    at = profile.activations.get(offer.offer_id)
    if at is None:
        return False
    if at.tzinfo is None:  # activations are UTC; a naive one is read as such
        at = at.replace(tzinfo=UTC)
    return event.occurred_at >= at


class Match(msgspec.Struct, frozen=True, gc=False):  # a record: made for every purchase
    offers: tuple[Offer, ...]  # empty when the purchase earns nothing
    outcome: Outcome  # EARNED, or why not
    detail: str = ""
    # BELOW_MIN_SPEND (and HOLDOUT): the offers the purchase met every other condition of. A later
    # clearing or incremental authorisation that lifts the amount may still earn under them
    # (stream.core.rules); never an offer that holds the account out.
    short_of_min_spend: tuple[Offer, ...] = ()
    # the offers that would have paid but hold the account out (their ``holdout`` lines), priced
    held_out: tuple[Offer, ...] = ()


def match(event: CardEvent, offers: OfferBook, profile: AccountProfile, local: LocalTime, basis_minor: int) -> Match:
    """The offers a purchase qualifies for (before stacking, caps and budget), or why none.

    The stages in order, each keeping the offers that pass it; the first to keep none is why:
    where (``_where``, of the offers whose MCCs admit the purchase's: ``OfferBook.for_mcc``), who
    (segments), when (``in_schedule``), activation, the billing currency (priced in it: from here
    on each offer as priced in it), how much (the minimum spend), then the holdout groups."""
    rejection = purchase_rejection(event)
    if rejection is not None:
        return Match((), rejection)
    listed, priced = offers.offers, offers.priced(event.billing_currency)
    candidates = [(listed[n], priced[n]) for n in offers.for_mcc(event.mcc) if _where(listed[n], event)]
    if not candidates:
        return Match((), Outcome.NO_MATCHING_OFFER)
    segments = profile.segments
    candidates = [c for c in candidates if not c[0].segments or not c[0].segments.isdisjoint(segments)]
    if not candidates:
        return Match((), Outcome.NOT_IN_SEGMENT, f"account segments: {', '.join(sorted(segments)) or 'none'}")
    candidates = [c for c in candidates if in_schedule(c[0], local)]
    if not candidates:
        return Match((), Outcome.OUTSIDE_SCHEDULE, f"{local.at:%A %H:%M} {local.note}")
    candidates = [c for c in candidates if activated(c[0], event, profile)]
    if not candidates:
        return Match((), Outcome.NOT_ACTIVATED, "offer not activated before the purchase")
    each = [p for _, p in candidates if p is not None]
    if not each:
        return Match((), Outcome.CURRENCY_NOT_PRICED, f"offer not priced in {event.billing_currency}")
    if offers.holdouts:
        held = {p.offer_id for p in each if held_out(event.account_id, p)}
        if held:
            return _without_held_out(each, held, basis_minor)
    kept = tuple(p for p in each if basis_minor >= p.min_spend_minor)
    if not kept:
        return Match((), Outcome.BELOW_MIN_SPEND, "", tuple(each))
    return Match(kept, Outcome.EARNED)


def _without_held_out(each: list[Offer], held: set[str], basis_minor: int) -> Match:
    """The match as if the offers holding the account out did not exist, keeping the ones the
    purchase qualified for (minimum spend included) for their ``holdout`` lines."""
    others = tuple(p for p in each if p.offer_id not in held)
    qualified = tuple(p for p in each if p.offer_id in held and basis_minor >= p.min_spend_minor)
    kept = tuple(p for p in others if basis_minor >= p.min_spend_minor)
    if kept:
        return Match(kept, Outcome.EARNED, held_out=qualified)
    if qualified:  # nothing else pays: the holdout is why (the others are all short of their minimum)
        return Match((), Outcome.HOLDOUT, "", others, qualified)
    return Match((), Outcome.BELOW_MIN_SPEND, "", others)


def best_tier(offer: Offer, profile: AccountProfile) -> tuple[int | None, str | None]:
    """The rate the account earns (the best tier it is in, else the base rate) and the tier's segment."""
    tiers = [t for t in offer.tiers if t.segment in profile.segments]
    if not tiers:
        return offer.rate_bps, None
    tier = max(tiers, key=lambda t: (t.rate_bps, t.segment))
    return tier.rate_bps, tier.segment
