"""The engine's shortcuts say what the plain computations they replace say: the fingerprint spelled
out, the abuse rules' memory kept when nothing falls out, the offers' funnel, the offer book's
lookups and cap periods judged once per period."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from stream import instructions
from stream.core.abuse import DEFAULT_RULES
from stream.core.eligibility import (
    AccountProfile,
    LocalTime,
    Match,
    _where,
    activated,
    in_schedule,
    local_time,
    match,
    purchase_rejection,
)
from stream.core.events import _CARD_FIELDS, CardEvent, to_event
from stream.core.holdout import bucket
from stream.core.holds import KEPT_MERCHANTS, KEPT_REFUNDS, KEPT_SMALL_PURCHASES, MINUTE_MS, remembered
from stream.core.lifecycle import DAY_MS
from stream.core.money import Rounding, round_exact
from stream.core.offer_terms import CapPeriod
from stream.core.offers import Offer, OfferBook
from stream.core.outcomes import Outcome
from stream.core.rewards import compute, period_end, period_of_key, period_over
from stream.core.state import AccountState, MerchantWatch, Share, Watch
from stream.core.working_copy import AccountStep, purchase_basis
from tests.factories import T0, card_event
from tests.unit.test_rules_properties import OFFER_BOOKS, OFFER_NAMES, PROFILE, SEEDED, event_sequences

T0_MS = int(T0.timestamp() * 1000)


def plain_fingerprint(event: CardEvent) -> str:
    values = tuple(getattr(event, name) for name in _CARD_FIELDS)
    if event.note is not None:
        values += (event.note,)
    return hashlib.blake2b(repr(values).encode(), digest_size=12).hexdigest()


@SEEDED
@given(events=event_sequences(multi_clearing=True))
def test_the_fingerprint_is_the_digest_of_the_fields_repr(events: list[CardEvent]) -> None:
    odd = card_event(original_transaction_ref="None", merchant_timezone="", clearing_sequence=2, clearing_count=3)
    note = to_event(instructions.review("RELEASE_HOLD", "acct-1", "txn-1", None, "EUR", "ops", "checked 'x'", T0))
    for event in [*events, odd, note, replace(odd, event_type="CLEARING")]:  # a plain string too
        assert event.fingerprint() == plain_fingerprint(event)


def plain_remembered(step: AccountStep, clock_ms: int) -> Watch | None:
    watch = step.watch
    loop, burst = step.abuse.refund_loop, step.abuse.purchase_burst
    refunds = [x for x in watch.refunds if x[0] >= clock_ms - 2 * loop.window_days * DAY_MS][-KEPT_REFUNDS:]
    small = [x for x in watch.small if x[0] >= clock_ms - 2 * burst.window_minutes * MINUTE_MS][-KEPT_SMALL_PURCHASES:]
    live = sorted(((m, w) for m, w in watch.merchants.items() if w.until_ms >= clock_ms), key=lambda mw: mw[1].until_ms)
    merchants = dict(live[-KEPT_MERCHANTS:])
    first_day = (clock_ms - 2 * loop.window_days * DAY_MS) // DAY_MS
    rewarded = {day: count for day, count in watch.rewarded.items() if day >= first_day}
    if not (refunds or small or merchants or rewarded):
        return None
    return Watch(refunds=refunds, small=small, merchants=merchants, rewarded=rewarded)


times = st.integers(T0_MS - 200 * DAY_MS, T0_MS + DAY_MS)


@SEEDED
@given(
    refunds=st.lists(st.tuples(times, st.sampled_from(("a", "b", "c"))), max_size=70),
    small=st.lists(st.tuples(times, st.sampled_from(("m1", "m2")), st.sampled_from(("a", "b"))), max_size=70),
    merchants=st.dictionaries(st.sampled_from(("m1", "m2", "m3")), st.builds(MerchantWatch, times, st.just("scan"))),
    rewarded=st.dictionaries(st.integers(T0_MS // DAY_MS - 200, T0_MS // DAY_MS + 1), st.integers(1, 3)),
    clock_ms=times,
)
def test_the_abuse_memory_is_the_plain_filtering(
    refunds: list[tuple[int, str]],
    small: list[tuple[int, str, str]],
    merchants: dict[str, MerchantWatch],
    rewarded: dict[int, int],
    clock_ms: int,
) -> None:
    watch = Watch(refunds=refunds, small=small, merchants=merchants, rewarded=rewarded)
    step = AccountStep(card_event(), AccountState(watch=watch), OFFER_BOOKS["grocery-5"], PROFILE, {}, DEFAULT_RULES)
    kept = remembered(step, clock_ms)
    assert kept == plain_remembered(step, clock_ms)
    if kept is not None:  # a watch is replaced, never changed in place: the very lists may be kept
        assert kept.merchants is not watch.merchants or not merchants


def plain_match(event: CardEvent, offers: OfferBook, profile: AccountProfile, local: LocalTime, basis_minor: int) -> Match:
    rejection = purchase_rejection(event)
    if rejection is not None:
        return Match((), rejection)
    currency = event.billing_currency
    stages: list[tuple[Outcome, Callable[[Offer], bool], Callable[[], str]]] = [
        (Outcome.NO_MATCHING_OFFER, lambda o: _where(o, event), str),
        (
            Outcome.NOT_IN_SEGMENT,
            lambda o: not o.segments or bool(o.segments & profile.segments),
            lambda: f"account segments: {', '.join(sorted(profile.segments)) or 'none'}",
        ),
        (Outcome.OUTSIDE_SCHEDULE, lambda o: in_schedule(o, local), lambda: f"{local.at:%A %H:%M} {local.note}"),
        (Outcome.NOT_ACTIVATED, lambda o: activated(o, event, profile), lambda: "offer not activated before the purchase"),
        (Outcome.CURRENCY_NOT_PRICED, lambda o: o.priced(currency) is not None, lambda: f"offer not priced in {currency}"),
    ]
    candidates = list(offers.offers)
    for outcome, keep, detail in stages:
        candidates = [o for o in candidates if keep(o)]
        if not candidates:
            return Match((), outcome, detail())
        if outcome is Outcome.CURRENCY_NOT_PRICED:
            candidates = [priced for o in candidates if (priced := o.priced(currency)) is not None]
    # The minimum spend, then the holdout groups: what holds the account out never pays, and is
    # never a near miss to reconsider; when nothing else pays, the holdout is why.
    held = {o.offer_id for o in candidates if o.holdout_bps and bucket(event.account_id, o.offer_id) < o.holdout_bps}
    free = tuple(o for o in candidates if o.offer_id not in held)
    fits = [o for o in candidates if basis_minor >= o.min_spend_minor]
    if not fits:
        return Match((), Outcome.BELOW_MIN_SPEND, "", free)
    paying = tuple(o for o in fits if o.offer_id not in held)
    qualified = tuple(o for o in fits if o.offer_id in held)
    if paying:
        return Match(paying, Outcome.EARNED, held_out=qualified)
    return Match((), Outcome.HOLDOUT, "", free, qualified)


PROFILES = (PROFILE, AccountProfile(), AccountProfile(frozenset({"students"})))


@SEEDED
@given(
    offers_name=OFFER_NAMES, events=event_sequences(), profile=st.sampled_from(PROFILES), currency=st.sampled_from(("EUR", "USD"))
)
def test_the_funnel_is_the_plain_one(offers_name: str, events: list[CardEvent], profile: AccountProfile, currency: str) -> None:
    offers = OFFER_BOOKS[offers_name]
    for event in events:
        event = replace(event, billing_currency=currency)
        local = local_time(event)
        assert match(event, offers, profile, local, purchase_basis(event)) == plain_match(
            event, offers, profile, local, purchase_basis(event)
        )


def test_the_offer_book_s_lookups_are_its_offers() -> None:
    for offers in OFFER_BOOKS.values():
        twice = OfferBook((*offers.offers, *offers.offers))  # the first of an id is the one
        for book in (offers, twice):
            for offer in book.offers:
                assert book.get(offer.offer_id) is next(o for o in book.offers if o.offer_id == offer.offer_id)
            assert book.get("no-such-offer") is None
            for currency in ("EUR", "USD", "JPY"):
                assert book.priced(currency) == tuple(o.priced(currency) for o in book.offers)
            for mcc in ("5411", "5812", "6011", "0000"):
                assert book.for_mcc(mcc) == tuple(
                    n for n, o in enumerate(book.offers) if (o.mccs.empty or mcc in o.mccs) and mcc not in o.excluded_mccs
                )


def plain_period_over(key: str, period: CapPeriod, today: date, grace_days: int) -> bool:
    if period_of_key(key) is not period:
        return True
    end = period_end(key)
    return end is not None and end + timedelta(days=grace_days) < today


@SEEDED
@given(
    day=st.dates(date(2025, 1, 1), date(2028, 12, 31)),
    period=st.sampled_from(list(CapPeriod)),
    kind=st.sampled_from(("day", "week", "month", "campaign")),
    today=st.dates(date(2025, 1, 1), date(2029, 3, 31)),
    grace=st.integers(0, 60),
)
def test_a_cap_period_is_over_as_the_plain_rule_says(day: date, period: CapPeriod, kind: str, today: date, grace: int) -> None:
    year, week, _ = day.isocalendar()
    key = {"day": day.isoformat(), "week": f"{year}-W{week:02d}", "month": f"{day.year:04d}-{day.month:02d}"}.get(
        kind, "campaign"
    )
    assert period_over(key, period, today, grace) is plain_period_over(key, period, today, grace)


@SEEDED
@given(
    basis=st.integers(0, 10**9),
    rate=st.integers(0, 10_000),
    carried=st.integers(-20_000, 20_000),
    rounding=st.sampled_from(("down", "half_up", "half_even")),
)
def test_an_amount_is_rounded_as_round_exact_rounds(basis: int, rate: int, carried: int, rounding: str) -> None:
    share = Share(
        offer_id="o", version=1, rounding=rounding, reward_kind="CASH", pending_days=30, accrue_on="AUTHORIZATION", currency="EUR"
    )
    share.rate_bps = rate
    plain = round_exact(basis * rate, Rounding(rounding), carried)
    amount = compute(share, basis, basis, carried)
    assert (amount.reward_minor, amount.carried_out, amount.exact, amount.carried_in) == (
        plain.reward_minor,
        plain.carried_remainder,
        basis * rate,
        carried,
    )
