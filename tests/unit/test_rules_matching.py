"""Unit tests of the rules engine's matching: nothing-earned reasons, basis, min spend, stacking, currencies."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from stream.core.balances import balances
from stream.core.offers import OfferBook
from stream.core.rules import Outcome, decide
from tests.factories import KEY, T0, auth, book, clearing, legs, offer, run_events, totals


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"response_code": "05"}, "declined"),
        ({"processing_code": "QUASI_CASH"}, "not_a_purchase"),
        ({"processing_code": "CASH_WITHDRAWAL"}, "not_a_purchase"),
        ({"mcc": "6011"}, "excluded_mcc"),
        ({"mcc": "7995"}, "excluded_mcc"),
        ({"mcc": "5812"}, "no_matching_offer"),
    ],
)
def test_case_12_nothing_earned_with_the_reason(overrides: dict[str, Any], reason: str) -> None:
    any_mcc = offer(offer_id="everything-1", rate_bps=100, mccs=[])
    offers = book(offer(), any_mcc) if reason != "no_matching_offer" else book()
    event = auth(**overrides)
    decision = decide(event, offers, None)
    assert decision.outcome.value == reason
    assert legs(decision.entries) == [("NOT_EARNED", "NONE", "NONE", 0)]
    (entry,) = decision.entries
    assert entry.explanation.reason == reason
    assert entry.explanation.basis_minor == 10_000
    assert entry.offer_id is None and entry.accrual_id == f"{event.event_id}#0"
    assert balances(decision.entries) == {}
    if reason == "declined":  # no approved authorisation: a clearing would be a force post
        assert decision.state.txns == {}
    else:  # judged once: the transaction keeps the refusal, so its clearing is not judged again
        (txn,) = decision.state.txns.values()
        assert txn.shares == () and txn.refused.reason == reason


def test_offer_excluded_mcc_wins_over_its_own_mcc_set() -> None:
    decision = decide(auth(), book(offer(mccs=[], excluded_mccs=["5400-5499"])), None)
    assert decision.outcome is Outcome.NO_MATCHING_OFFER


def test_case_13_cash_back_at_the_till_never_earns() -> None:
    event = auth(5_000, processing_code="PURCHASE_WITH_CASHBACK", cashback_at_pos_minor=2_000)
    decision = decide(event, book(), None)
    assert legs(decision.entries) == [("PENDING_CREATED", "EXPENSE", "PENDING", 150)]
    assert decision.entries[0].explanation.basis_minor == 3_000


@pytest.mark.parametrize(
    ("amount", "outcome", "expected"),
    [
        (1_999, Outcome.BELOW_MIN_SPEND, [("NOT_EARNED", "NONE", "NONE", 0)]),
        (2_000, Outcome.EARNED, [("PENDING_CREATED", "EXPENSE", "PENDING", 100)]),
    ],
)
def test_case_14_minimum_spend(amount: int, outcome: Outcome, expected: list[tuple[str, str, str, int]]) -> None:
    decision = decide(auth(amount), book(offer(min_spend_minor=2_000)), None)
    assert decision.outcome is outcome
    assert legs(decision.entries) == expected
    assert decision.entries[0].explanation.reason == outcome.value


# Cases 15 (period caps), 16 (boost), 17 (tiers), 19 (activation), 20 (days and hours), 21 (budget),
# 23 (carry in the engine) and 25 (reward kinds): tests/unit/test_rules_offer_terms.py.


def test_max_reward_per_transaction() -> None:
    _, entries, _ = run_events([auth(100_000), clearing(100_000)], book(offer(max_reward_per_txn_minor=2_000)))
    assert legs(entries) == [
        ("PENDING_CREATED", "EXPENSE", "PENDING", 2_000),
        ("CONFIRMED", "PENDING", "CONFIRMED", 2_000),
    ]
    assert entries[0].explanation.detail.endswith("(rounded down, at most 20.00 EUR)")


def _stacking_offers(stackable: bool) -> Any:
    bank_wide = offer(offer_id="everyday-1", rate_bps=100, mccs=[], stackable=stackable)
    merchant = offer(
        offer_id="grocer-5", rate_bps=500, mccs=[], merchant_ids=["m-grocer"], sponsor="MERCHANT", sponsor_id="grocer-co"
    )
    return book(bank_wide, merchant)


def test_case_18_most_valuable_offer_only() -> None:
    decision = decide(auth(), _stacking_offers(stackable=False), None)
    assert legs(decision.entries) == [("PENDING_CREATED", "EXPENSE", "PENDING", 500)]
    assert decision.entries[0].offer_id == "grocer-5"


def test_case_18_stackable_offer_adds_up() -> None:
    state, entries, _ = run_events([auth(), clearing()], _stacking_offers(stackable=True))
    assert [(e.offer_id, *leg) for e, leg in zip(entries, legs(entries), strict=True)] == [
        ("grocer-5", "PENDING_CREATED", "EXPENSE", "PENDING", 500),
        ("everyday-1", "PENDING_CREATED", "EXPENSE", "PENDING", 100),
        ("grocer-5", "CONFIRMED", "PENDING", "CONFIRMED", 500),
        ("everyday-1", "CONFIRMED", "PENDING", "CONFIRMED", 100),
    ]
    assert balances(entries) == {KEY: totals(confirmed=600, lifetime=600)}


def test_stacking_tie_goes_to_the_most_recent_offer() -> None:
    older = offer(offer_id="a-older", valid_from="2026-01-01")
    newer = offer(offer_id="b-newer", valid_from="2026-06-01")
    decision = decide(auth(), book(older, newer), None)
    assert [e.offer_id for e in decision.entries] == ["b-newer"]


@pytest.mark.parametrize("listed", ["in_id_order", "reversed"])
def test_a_full_tie_goes_to_the_first_offer_id_whatever_order_the_offers_are_listed_in(listed: str) -> None:
    """Same pay, same start, same version: the choice must not follow the book's order (the chaos
    run's oracle, which listed the offers as the file does, paid 3% cash where the workers, which
    list them by id, paid 0.50 store credit, on purchases where both came to exactly 0.50)."""
    cash = offer(offer_id="dining-3", rate_bps=300, mccs=["5814"], merchant_ids=[])
    credit = offer(
        offer_id="coffee-fixed", rate_bps=None, fixed_reward_minor=50, currency="EUR", reward_kind="STORE_CREDIT", mccs=[]
    )
    listed_offers = (credit, cash) if listed == "in_id_order" else (cash, credit)
    decision = decide(auth(mcc="5814", billing_amount_minor=1_667), OfferBook(listed_offers), None)
    assert [(e.offer_id, e.amount_minor) for e in decision.entries] == [("coffee-fixed", 50)]


@pytest.mark.parametrize(
    ("currency", "amount", "reward", "detail"),
    [
        ("JPY", 10_000, 500, "pending 5.00% of 10000 JPY = 500 JPY (rounded down)"),
        ("JPY", 1_999, 99, "pending 5.00% of 1999 JPY = 99 JPY (rounded down)"),
        ("BHD", 100_000, 5_000, "pending 5.00% of 100.000 BHD = 5.000 BHD (rounded down)"),
        ("BHD", 12_345, 617, "pending 5.00% of 12.345 BHD = 0.617 BHD (rounded down)"),
    ],
)
def test_case_22_reward_on_the_billing_amount_in_its_currency(currency: str, amount: int, reward: int, detail: str) -> None:
    # paid in US dollars abroad; the account is billed in its own currency
    events = [
        auth(6_789, billing_amount_minor=amount, billing_currency=currency),
        clearing(6_789, billing_amount_minor=amount, billing_currency=currency),
    ]
    _, entries, _ = run_events(events)
    assert legs(entries) == [("PENDING_CREATED", "EXPENSE", "PENDING", reward), ("CONFIRMED", "PENDING", "CONFIRMED", reward)]
    assert {e.currency for e in entries} == {currency}
    assert entries[0].explanation.detail == detail
    assert entries[0].explanation.basis_currency == currency
    assert balances(entries) == {("acct-1", "CASH", currency): totals(confirmed=reward, lifetime=reward)}


def test_offer_validity_window_is_judged_at_occurred_at() -> None:
    window = book(offer(valid_from=T0, valid_to=T0 + timedelta(days=1)))
    assert decide(auth(occurred_at=T0), window, None).outcome is Outcome.EARNED
    assert decide(auth(occurred_at=T0 - timedelta(seconds=1)), window, None).outcome is Outcome.NO_MATCHING_OFFER
    assert decide(auth(occurred_at=T0 + timedelta(days=1)), window, None).outcome is Outcome.NO_MATCHING_OFFER
