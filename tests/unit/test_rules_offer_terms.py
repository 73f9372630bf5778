"""Unit tests of the rules engine on the offer terms of offer.v2: one test per DOMAIN.md case
(10's cap headroom, 15, 16, 17, 19, 20, 21, 23, 25), exact entries, balances and reasons."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from stream.core.balances import balances
from stream.core.entries import Entry
from stream.core.rules import AccountProfile, Outcome, decide
from stream.core.state import AccountState
from stream.core.state_rows import decode_summary
from tests.factories import (
    KEY,
    T0,
    after_purchase,
    auth,
    book,
    clearing,
    legs,
    offer,
    profile,
    run_decisions,
    run_events,
    totals,
)

CAPPED = book(offer(offer_id="grocery-10", rate_bps=1_000, cap={"period": "month", "amount_minor": 2_000}, currency="EUR"))
JANUARY = datetime(2027, 1, 4, 10, tzinfo=UTC)


def details(entries: list[dict[str, Any]]) -> list[str]:
    return [e.explanation.detail for e in entries]


# --- case 15: cap per account and period ---------------------------------------------------------


def test_case_15_monthly_cap_then_the_next_month_starts_again() -> None:
    december = [auth(15_000), clearing(15_000), auth(10_000, transaction_ref="txn-2"), clearing(10_000, transaction_ref="txn-2")]
    state, entries, outcomes = run_events(december, CAPPED)
    assert outcomes == [Outcome.EARNED, Outcome.CONFIRMED, Outcome.EARNED, Outcome.CONFIRMED]
    assert legs(entries) == [
        ("PENDING_CREATED", "EXPENSE", "PENDING", 1_500),
        ("CONFIRMED", "PENDING", "CONFIRMED", 1_500),
        ("PENDING_CREATED", "EXPENSE", "PENDING", 500),  # 10.00 wanted, 5.00 left under the cap
        ("CONFIRMED", "PENDING", "CONFIRMED", 500),
    ]
    assert details(entries)[3] == (
        "confirmed: 10.00% of 100.00 EUR = 5.00 EUR "
        "(rounded down, cap 20.00 EUR per month 2026-12 reached, judged in Europe/Paris)"
    )
    assert balances(entries) == {KEY: totals(confirmed=2_000, lifetime=2_000)}
    assert state is not None and state.caps == {"grocery-10": {"2026-12": 2_000}}

    state, more, outcomes = run_events([auth(5_000, transaction_ref="txn-3")], CAPPED, state)
    assert outcomes == [Outcome.CAP_REACHED]
    assert legs(more) == [("NOT_EARNED", "NONE", "NONE", 0)]
    assert (more[0].offer_id, more[0].explanation.reason) == ("grocery-10", "cap_reached")

    _, january, outcomes = run_events([auth(15_000, transaction_ref="txn-4", occurred_at=JANUARY)], CAPPED, state)
    assert outcomes == [Outcome.EARNED]
    assert legs(january) == [("PENDING_CREATED", "EXPENSE", "PENDING", 1_500)]


def test_case_15_cap_periods_are_local_days_and_iso_weeks() -> None:
    daily = book(offer(rate_bps=1_000, cap={"period": "day", "amount_minor": 500}, currency="EUR"))
    # 23:30 UTC on Tuesday 1 December is already Wednesday 2 December in Paris: another day.
    late = T0.replace(hour=23, minute=30)
    _, entries, _ = run_events([clearing(5_000), clearing(5_000, transaction_ref="txn-2", occurred_at=late)], daily)
    assert legs(entries) == [("CONFIRMED", "EXPENSE", "CONFIRMED", 500), ("CONFIRMED", "EXPENSE", "CONFIRMED", 500)]

    weekly = book(offer(rate_bps=1_000, cap={"period": "week", "amount_minor": 500}, currency="EUR"))
    sunday, monday = datetime(2026, 12, 6, 12, tzinfo=UTC), datetime(2026, 12, 7, 12, tzinfo=UTC)
    state, entries, outcomes = run_events(
        [
            clearing(5_000, occurred_at=sunday),
            clearing(5_000, transaction_ref="txn-2", occurred_at=sunday),
            clearing(5_000, transaction_ref="txn-3", occurred_at=monday),
        ],
        weekly,
    )
    assert outcomes == [Outcome.CONFIRMED, Outcome.CAP_REACHED, Outcome.CONFIRMED]
    assert [leg[3] for leg in legs(entries)] == [500, 0, 500]
    assert state is not None and state.caps == {"grocery-5": {"2026-W49": 500, "2026-W50": 500}}


def test_cap_periods_are_pruned_once_over() -> None:
    state, _, _ = run_events([clearing(5_000)], CAPPED)
    assert state is not None and state.caps == {"grocery-10": {"2026-12": 500}}
    # December ends on 1 January; its usage is kept for the offer's auth_expiry_days (30) after.
    state, _, _ = run_events([clearing(5_000, transaction_ref="txn-2", occurred_at=JANUARY)], CAPPED, state)
    assert state is not None and state.caps == {"grocery-10": {"2026-12": 500, "2027-01": 500}}
    february = datetime(2027, 2, 1, 10, tzinfo=UTC)
    state, _, _ = run_events([clearing(5_000, transaction_ref="txn-3", occurred_at=february)], CAPPED, state)
    assert state is not None and state.caps == {"grocery-10": {"2027-01": 500, "2027-02": 500}}


def test_case_10_refund_gives_cap_headroom_back_to_the_purchase_period() -> None:
    full_month = [
        clearing(15_000),
        clearing(10_000, transaction_ref="txn-2"),
        after_purchase("REFUND", 4_000, original_transaction_ref="txn-2"),
    ]
    state, entries, _ = run_events(full_month, CAPPED)
    assert legs(entries) == [
        ("CONFIRMED", "EXPENSE", "CONFIRMED", 1_500),
        ("CONFIRMED", "EXPENSE", "CONFIRMED", 500),
        ("CLAWED_BACK", "CONFIRMED", "EXPENSE", 200),  # 40% of the 5.00 the purchase earned
    ]
    assert state is not None and state.caps == {"grocery-10": {"2026-12": 1_800}}

    # a January purchase uses January's cap; a January refund of a December purchase gives December back
    later = [
        clearing(15_000, transaction_ref="txn-3", occurred_at=JANUARY),
        after_purchase("REFUND", 15_000, original_transaction_ref="txn-1", occurred_at=JANUARY),
        clearing(10_000, transaction_ref="txn-4", occurred_at=JANUARY + timedelta(hours=1)),
    ]
    state, more, _ = run_events(later, CAPPED, state)
    assert legs(more) == [
        ("CONFIRMED", "EXPENSE", "CONFIRMED", 1_500),
        ("CLAWED_BACK", "CONFIRMED", "EXPENSE", 1_500),
        ("CONFIRMED", "EXPENSE", "CONFIRMED", 500),  # January has 5.00 left, whatever December got back
    ]
    assert state is not None and state.caps == {"grocery-10": {"2026-12": 300, "2027-01": 2_000}}
    assert balances(entries + more) == {KEY: totals(confirmed=2_300, lifetime=4_000, clawed=1_700)}


# --- case 16: boost ------------------------------------------------------------------------------

BOOSTED = book(offer(rate_bps=200, boost={"threshold_minor": 20_000, "rate_bps": 500}))


@pytest.mark.parametrize(("amount", "reward", "rate"), [(30_000, 1_500, 500), (20_000, 1_000, 500), (19_999, 399, 200)])
def test_case_16_boost_for_the_whole_purchase_from_the_threshold(amount: int, reward: int, rate: int) -> None:
    _, entries, _ = run_events([auth(amount), clearing(amount)], BOOSTED)
    assert legs(entries) == [("PENDING_CREATED", "EXPENSE", "PENDING", reward), ("CONFIRMED", "PENDING", "CONFIRMED", reward)]
    assert [e.explanation.rate_bps for e in entries] == [rate, rate]
    assert balances(entries) == {KEY: totals(confirmed=reward, lifetime=reward)}


def test_case_16_boost_is_explained() -> None:
    (entry,) = decide(auth(30_000), BOOSTED, None).entries
    assert entry.explanation.detail == (
        "pending 5.00% (boost: purchase of at least 200.00 EUR) of 300.00 EUR = 15.00 EUR (rounded down)"
    )


# --- case 17: tiers and segments -----------------------------------------------------------------

TIERED = book(offer(rate_bps=100, tiers=[{"segment": "vip", "rate_bps": 300}, {"segment": "staff", "rate_bps": 200}]))


@pytest.mark.parametrize(
    ("segments", "reward", "detail"),
    [
        ((), 100, "pending 1.00% of 100.00 EUR = 1.00 EUR (rounded down)"),
        (("new",), 100, "pending 1.00% of 100.00 EUR = 1.00 EUR (rounded down)"),
        (("vip",), 300, "pending 3.00% (tier vip) of 100.00 EUR = 3.00 EUR (rounded down)"),
        (("staff", "vip"), 300, "pending 3.00% (tier vip) of 100.00 EUR = 3.00 EUR (rounded down)"),  # the best tier wins
    ],
)
def test_case_17_vip_tier_rate(segments: tuple[str, ...], reward: int, detail: str) -> None:
    _, entries, _ = run_events([auth(), clearing()], TIERED, profile=profile(*segments))
    assert legs(entries) == [("PENDING_CREATED", "EXPENSE", "PENDING", reward), ("CONFIRMED", "PENDING", "CONFIRMED", reward)]
    assert entries[0].explanation.detail == detail
    assert balances(entries) == {KEY: totals(confirmed=reward, lifetime=reward)}


def test_segment_offer_is_only_for_accounts_in_it() -> None:
    offers = book(offer(segments=["vip", "new"]))
    decision = decide(auth(), offers, None, profile("staff"))
    assert decision.outcome is Outcome.NOT_IN_SEGMENT
    assert legs(decision.entries) == [("NOT_EARNED", "NONE", "NONE", 0)]
    assert decision.entries[0].explanation.detail == "authorisation earns nothing: not_in_segment (account segments: staff)"
    assert decide(auth(), offers, None).outcome is Outcome.NOT_IN_SEGMENT  # no profile: no segment
    assert decide(auth(), offers, None, profile("new")).outcome is Outcome.EARNED


# --- case 19: activation -------------------------------------------------------------------------


def test_case_19_purchase_before_activation_earns_nothing_after_it_does() -> None:
    offers = book(offer(requires_activation=True))
    activated = profile(**{"grocery-5": T0 + timedelta(hours=1)})
    before, at, after = (
        auth(transaction_ref="txn-1"),
        auth(transaction_ref="txn-2", occurred_at=T0 + timedelta(hours=1)),
        auth(transaction_ref="txn-3", occurred_at=T0 + timedelta(days=1)),
    )
    _, entries, outcomes = run_events([before, at, after], offers, profile=activated)
    assert outcomes == [Outcome.NOT_ACTIVATED, Outcome.EARNED, Outcome.EARNED]
    assert legs(entries) == [
        ("NOT_EARNED", "NONE", "NONE", 0),
        ("PENDING_CREATED", "EXPENSE", "PENDING", 500),
        ("PENDING_CREATED", "EXPENSE", "PENDING", 500),
    ]
    assert entries[0].explanation.reason == "not_activated"
    assert balances(entries) == {KEY: totals(pending=1_000)}
    assert decide(after, offers, None, profile("vip")).outcome is Outcome.NOT_ACTIVATED  # never activated


# --- case 20: days of week and hours, in the merchant's time zone --------------------------------

WEEKENDS = book(offer(days_of_week=["SAT", "SUN"]))
FRIDAY_NIGHT_UTC = datetime(2026, 12, 4, 23, 30, tzinfo=UTC)  # Saturday 00:30 in Paris
SUNDAY_NIGHT_UTC = datetime(2026, 12, 6, 23, 30, tzinfo=UTC)  # Monday 00:30 in Paris


@pytest.mark.parametrize(
    ("occurred_at", "zone", "outcome", "detail"),
    [
        (
            FRIDAY_NIGHT_UTC,
            "Europe/Paris",
            Outcome.EARNED,
            "pending 5.00% of 100.00 EUR = 5.00 EUR (rounded down, judged in Europe/Paris)",
        ),
        (
            SUNDAY_NIGHT_UTC,
            "Europe/Paris",
            Outcome.OUTSIDE_SCHEDULE,
            "authorisation earns nothing: outside_schedule (Monday 00:30 in Europe/Paris)",
        ),
        (
            datetime(2026, 12, 5, 3, tzinfo=UTC),
            "America/New_York",
            Outcome.OUTSIDE_SCHEDULE,
            "authorisation earns nothing: outside_schedule (Friday 22:00 in America/New_York)",
        ),
        (
            SUNDAY_NIGHT_UTC,
            None,
            Outcome.EARNED,
            "pending 5.00% of 100.00 EUR = 5.00 EUR (rounded down, judged in UTC (no merchant time zone))",
        ),
        (
            FRIDAY_NIGHT_UTC,
            "Mars/Olympus_Mons",
            Outcome.OUTSIDE_SCHEDULE,
            "authorisation earns nothing: outside_schedule (Friday 23:30 in UTC (merchant time zone 'Mars/Olympus_Mons' unknown))",
        ),
    ],
)
def test_case_20_weekends_only_in_the_merchants_time_zone(
    occurred_at: datetime, zone: str | None, outcome: Outcome, detail: str
) -> None:
    decision = decide(auth(occurred_at=occurred_at, merchant_timezone=zone), WEEKENDS, None)
    assert decision.outcome is outcome
    (entry,) = decision.entries
    assert entry.explanation.detail == detail
    assert entry.explanation.reason == outcome.value


@pytest.mark.parametrize(
    ("local_time", "outcome"),
    [
        ("17:59", Outcome.OUTSIDE_SCHEDULE),
        ("18:00", Outcome.EARNED),
        ("22:59", Outcome.EARNED),
        ("23:00", Outcome.OUTSIDE_SCHEDULE),
    ],
)
def test_case_20_hours_from_inclusive_to_exclusive(local_time: str, outcome: Outcome) -> None:
    evenings = book(offer(hours={"from": "18:00", "to": "23:00"}))
    hour, minute = map(int, local_time.split(":"))
    at = datetime(2026, 12, 1, hour, minute, tzinfo=UTC) - timedelta(hours=1)  # Paris is UTC+1 in December
    assert decide(auth(occurred_at=at), evenings, None).outcome is outcome


# --- case 21: campaign budget --------------------------------------------------------------------

BUDGETED = book(offer(budget_minor=1_000, currency="EUR"))


def test_case_21_budget_used_up_then_a_refund_gives_some_back() -> None:
    budget = {"grocery-5": 1_000}
    events = [
        auth(10_000),
        clearing(10_000),  # 5.00: reserved at authorisation, confirmed
        auth(15_000, transaction_ref="txn-2"),
        clearing(15_000, transaction_ref="txn-2"),  # 7.50 wanted, 5.00 left
        auth(10_000, transaction_ref="txn-3"),  # nothing left
        after_purchase("REFUND", 4_000),  # 2.00 of txn-1 back to the budget
        auth(10_000, transaction_ref="txn-4"),  # 2.00 of 5.00
    ]
    _, decisions = run_decisions(events, BUDGETED, budget=budget)
    assert [d.outcome for d in decisions] == [
        Outcome.EARNED,
        Outcome.CONFIRMED,
        Outcome.EARNED,
        Outcome.CONFIRMED,
        Outcome.BUDGET_EXHAUSTED,
        Outcome.CLAWED_BACK,
        Outcome.EARNED,
    ]
    assert [dict(d.budget_deltas) for d in decisions] == [
        {"grocery-5": 500},
        {},
        {"grocery-5": 500},
        {},
        {},
        {"grocery-5": -200},
        {"grocery-5": 200},
    ]
    entries = [e for d in decisions for e in d.entries]
    assert legs(entries) == [
        ("PENDING_CREATED", "EXPENSE", "PENDING", 500),
        ("CONFIRMED", "PENDING", "CONFIRMED", 500),
        ("PENDING_CREATED", "EXPENSE", "PENDING", 500),
        ("CONFIRMED", "PENDING", "CONFIRMED", 500),
        ("NOT_EARNED", "NONE", "NONE", 0),
        ("CLAWED_BACK", "CONFIRMED", "EXPENSE", 200),
        ("PENDING_CREATED", "EXPENSE", "PENDING", 200),
    ]
    assert details(entries)[2] == "pending 5.00% of 150.00 EUR = 5.00 EUR (rounded down, campaign budget exhausted)"
    assert (entries[4].offer_id, entries[4].explanation.reason) == ("grocery-5", "budget_exhausted")
    assert budget == {"grocery-5": 0}
    assert balances(entries) == {KEY: totals(pending=200, confirmed=800, lifetime=1_000, clawed=200)}


def test_budget_reserved_at_authorisation_is_released_by_expiry_and_partial_clearing() -> None:
    expiry = after_purchase(
        "AUTHORIZATION_EXPIRY", 10_000, transaction_ref="txn-1", original_transaction_ref=None, processing_code="PURCHASE"
    )
    _, decisions = run_decisions([auth(), expiry], BUDGETED)
    assert [dict(d.budget_deltas) for d in decisions] == [{"grocery-5": 500}, {"grocery-5": -500}]
    _, decisions = run_decisions([auth(), clearing(8_000)], BUDGETED)
    assert [dict(d.budget_deltas) for d in decisions] == [{"grocery-5": 500}, {"grocery-5": -100}]


def test_budget_given_by_the_caller_wins_and_a_redelivery_spends_nothing() -> None:
    event = auth()
    decision = decide(event, BUDGETED, None, budget_remaining={"grocery-5": 300})
    assert legs(decision.entries) == [("PENDING_CREATED", "EXPENSE", "PENDING", 300)]
    assert decision.budget_deltas == {"grocery-5": 300}
    again = decide(event, BUDGETED, decision.state, budget_remaining={"grocery-5": 0})
    assert again.outcome is Outcome.DUPLICATE and again.entries == decision.entries and again.budget_deltas == {}
    assert decide(auth(), book(), None).budget_deltas == {}  # no budget: no deltas


def test_chargeback_gives_budget_back_and_its_reversal_takes_it_again() -> None:
    events = [clearing(), after_purchase("CHARGEBACK", 10_000), after_purchase("CHARGEBACK_REVERSAL", 10_000)]
    _, decisions = run_decisions(events, BUDGETED, budget={"grocery-5": 1_000})
    assert [dict(d.budget_deltas) for d in decisions] == [{"grocery-5": 500}, {"grocery-5": -500}, {"grocery-5": 500}]


# --- case 23: rounding with the remainder carried ------------------------------------------------


def test_case_23_small_purchases_carry_the_remainder() -> None:
    events = [clearing(33, transaction_ref=f"txn-{i}") for i in range(3)]
    state, entries, _ = run_events(events)
    assert legs(entries) == [("CONFIRMED", "EXPENSE", "CONFIRMED", amount) for amount in (1, 2, 1)]  # 1.65, 2.30, 1.95
    entries = [e for e in entries if e.entry_kind != "RECONCILIATION"]  # three force posts: three items besides
    assert [e.explanation.carried_remainder for e in entries] == [6_500, 3_000, 9_500]
    assert details(entries) == [
        "confirmed: 5.00% of 0.33 EUR = 0.01 EUR (rounded down, exactly 0.0165 EUR, 0.0065 EUR carried forward)",
        "confirmed: 5.00% of 0.33 EUR = 0.02 EUR (rounded down, exactly 0.0165 EUR, 0.0065 EUR carried in, 0.003 EUR carried forward)",
        "confirmed: 5.00% of 0.33 EUR = 0.01 EUR (rounded down, exactly 0.0165 EUR, 0.003 EUR carried in, 0.0095 EUR carried forward)",
    ]
    assert state is not None and state.carry == {"grocery-5:EUR": 9_500}


def test_case_23_a_hundred_small_purchases_earn_what_one_large_one_would() -> None:
    small = [e for i in range(100) for e in (auth(33, transaction_ref=f"t-{i}"), clearing(33, transaction_ref=f"t-{i}"))]
    _, entries, _ = run_events(small)
    _, one, _ = run_events([auth(3_300), clearing(3_300)])
    assert balances(entries) == balances(one) == {KEY: totals(confirmed=165, lifetime=165)}
    # pending is provisional and ignores the carry: each authorisation showed 0.01
    assert [leg for leg in legs(entries) if leg[0] == "PENDING_CREATED"] == [("PENDING_CREATED", "EXPENSE", "PENDING", 1)] * 100


def test_carry_is_dropped_when_a_limit_cuts_the_reward() -> None:
    offers = book(offer(max_reward_per_txn_minor=1))
    state, entries, _ = run_events([clearing(33), clearing(33, transaction_ref="txn-2")], offers)
    assert [leg[3] for leg in legs(entries)] == [1, 1]  # 1.65 then 1.65 (not 2.30): the cut fraction is not owed
    assert state is not None and state.carry == {}


# --- case 25: reward kinds -----------------------------------------------------------------------


def test_case_25_points_are_whole_and_their_fraction_is_carried() -> None:
    points = book(offer(offer_id="books-2pts", reward_kind="POINTS", rate_bps=None, points_per_unit=2, currency="EUR"))
    events = [auth(1_075), clearing(1_075), auth(1_075, transaction_ref="txn-2"), clearing(1_075, transaction_ref="txn-2")]
    _, entries, _ = run_events(events, points)
    assert legs(entries) == [
        ("PENDING_CREATED", "EXPENSE", "PENDING", 21),  # 21.5 points, pending rounds down
        ("CONFIRMED", "PENDING", "CONFIRMED", 21),  # 0.5 carried
        ("PENDING_CREATED", "EXPENSE", "PENDING", 21),
        ("CONFIRMED", "PENDING", "CONFIRMED", 21),
        ("CONFIRMED", "EXPENSE", "CONFIRMED", 1),  # 21.5 + 0.5 = 22
    ]
    assert {(e.reward_kind, e.currency) for e in entries} == {("POINTS", "PTS")}
    assert (
        details(entries)[1]
        == "confirmed: 2 points per EUR of 10.75 EUR = 21 PTS (rounded down, exactly 21.5 PTS, 0.5 PTS carried forward)"
    )
    assert balances(entries) == {("acct-1", "POINTS", "PTS"): totals(confirmed=43, lifetime=43)}


def test_case_25_store_credit_charity_and_cash_are_separate_balances() -> None:
    offers = book(
        offer(offer_id="cash-1", rate_bps=100, stackable=True),
        offer(
            offer_id="credit-fixed",
            reward_kind="STORE_CREDIT",
            rate_bps=None,
            fixed_reward_minor=50,
            currency="EUR",
            stackable=True,
        ),
        offer(offer_id="give-2", reward_kind="CHARITY", charity_id="red-cross", rate_bps=200, stackable=True),
    )
    _, entries, _ = run_events([auth(), clearing(), after_purchase("REFUND", 5_000)], offers)
    assert [(e.offer_id, e.reward_kind, *leg) for e, leg in zip(entries, legs(entries), strict=True)] == [
        ("cash-1", "CASH", "PENDING_CREATED", "EXPENSE", "PENDING", 100),
        ("credit-fixed", "STORE_CREDIT", "PENDING_CREATED", "EXPENSE", "PENDING", 50),
        ("give-2", "CHARITY", "PENDING_CREATED", "EXPENSE", "PENDING", 200),
        ("cash-1", "CASH", "CONFIRMED", "PENDING", "CONFIRMED", 100),
        ("credit-fixed", "STORE_CREDIT", "CONFIRMED", "PENDING", "CONFIRMED", 50),
        ("give-2", "CHARITY", "CONFIRMED", "PENDING", "CONFIRMED", 200),
        ("cash-1", "CASH", "CLAWED_BACK", "CONFIRMED", "EXPENSE", 50),
        ("credit-fixed", "STORE_CREDIT", "CLAWED_BACK", "CONFIRMED", "EXPENSE", 25),  # a fixed reward is prorated too
        ("give-2", "CHARITY", "CLAWED_BACK", "CONFIRMED", "EXPENSE", 100),
    ]
    assert details(entries)[1] == "pending fixed 0.50 EUR per purchase of 100.00 EUR = 0.50 EUR"
    charity = [e for e in entries if e.reward_kind == "CHARITY"]
    assert all(e.explanation.detail.endswith("; charity_id=red-cross") for e in charity)
    assert balances(entries) == {
        KEY: totals(confirmed=50, lifetime=100, clawed=50),
        ("acct-1", "STORE_CREDIT", "EUR"): totals(confirmed=25, lifetime=50, clawed=25),
        ("acct-1", "CHARITY", "EUR"): totals(confirmed=100, lifetime=200, clawed=100),
    }


def test_fixed_reward_is_paid_once_per_purchase_over_its_clearing_parts() -> None:
    offers = book(offer(rate_bps=None, fixed_reward_minor=300, currency="EUR"))
    parts = [
        auth(),
        clearing(6_000, clearing_sequence=1, clearing_count=2),
        clearing(4_000, clearing_sequence=2, clearing_count=2),
    ]
    _, entries, _ = run_events(parts, offers)
    assert legs(entries) == [("PENDING_CREATED", "EXPENSE", "PENDING", 300), ("CONFIRMED", "PENDING", "CONFIRMED", 300)]


# --- interface -----------------------------------------------------------------------------------


def test_old_state_without_caps_and_carry_still_works() -> None:
    state, _, _ = run_events([auth()])
    assert state is not None
    # stored whole in JSON by the first versions: recent events under "seen", no caps, carry,
    # clock, event ids or refusals, and shares from before offer v2
    before_v2 = ("method", "tier", "boost", "fixed_minor", "points_per_unit", "cap", "cap_period", "budget")
    before_v2 += ("charity_id", "place", "basis_currency")
    plain = msgspec.to_builtins(state)
    old = {
        "seen": plain["recent"],
        "txns": {
            ref: {
                **{k: v for k, v in txn.items() if k not in ("events", "last_ms")},
                "shares": [{k: v for k, v in share.items() if k not in before_v2} for share in txn["shares"]],
            }
            for ref, txn in plain["txns"].items()
        },
    }
    stored = decode_summary(json.dumps(old).encode())
    assert isinstance(stored, AccountState)
    (share,) = next(iter(stored.txns.values())).shares
    assert (share.method, share.basis_currency, share.cap) == ("rate", "EUR", None)
    decision = decide(clearing(), book(), stored)
    assert legs(decision.entries) == [("CONFIRMED", "PENDING", "CONFIRMED", 500)]


def test_account_profile_defaults_are_empty_and_frozen() -> None:
    empty = AccountProfile()
    assert empty.segments == frozenset() and dict(empty.activations) == {}
    with pytest.raises(TypeError):
        empty.activations["x"] = T0  # type: ignore[index]


def test_entries_of_every_reward_kind_encode_as_accruals() -> None:
    from schemas.codec import Codec

    offers = book(
        offer(offer_id="pts", reward_kind="POINTS", rate_bps=None, points_per_unit=3, currency="EUR", stackable=True),
        offer(
            offer_id="credit", reward_kind="STORE_CREDIT", rate_bps=None, fixed_reward_minor=50, currency="EUR", stackable=True
        ),
        offer(
            offer_id="give",
            reward_kind="CHARITY",
            charity_id="unicef",
            rate_bps=100,
            cap={"period": "week", "amount_minor": 10},
            currency="EUR",
        ),
    )
    _, entries, _ = run_events([auth(), clearing(), auth(transaction_ref="txn-2")], offers)
    codec = Codec()
    for entry in entries:
        decoded = codec.decode(codec.encode("accrual", entry.record()), expected_subject="accrual")[1]
        assert Entry.of({**decoded, "occurred_at": entry.occurred_at}) == entry  # the timestamp comes back as a datetime
    assert {e.reward_kind for e in entries} == {"POINTS", "STORE_CREDIT", "CHARITY"}
