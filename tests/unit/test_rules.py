"""Unit tests of the pure rules engine: one test per DOMAIN.md lifecycle case the engine covers, exact entries."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from stream.core.balances import balances
from stream.core.rules import Outcome, decide
from tests.factories import KEY, after_purchase, auth, book, card_event, clearing, legs, offer, run_events, totals


def test_case_1_auth_then_clearing() -> None:
    state, entries, outcomes = run_events([auth()])
    assert outcomes == [Outcome.EARNED]
    assert legs(entries) == [("PENDING_CREATED", "EXPENSE", "PENDING", 500)]
    assert balances(entries) == {KEY: totals(pending=500)}

    _, more, outcomes = run_events([clearing()], state=state)
    assert outcomes == [Outcome.CONFIRMED]
    assert legs(more) == [("CONFIRMED", "PENDING", "CONFIRMED", 500)]
    # "After pending_days: available 5.00" is not implemented yet: no such event exists.
    assert balances(entries + more) == {KEY: totals(confirmed=500, lifetime=500)}


def test_case_1_entry_carries_its_explanation() -> None:
    event = auth()
    (entry,) = decide(event, book(), None).entries
    assert entry.record() == {
        "accrual_id": f"{event.event_id}#0",
        "source_event_id": event.event_id,
        "account_id": "acct-1",
        "transaction_ref": "txn-1",
        "entry_kind": "PENDING_CREATED",
        "debit_book": "EXPENSE",
        "credit_book": "PENDING",
        "amount_minor": 500,
        "currency": "EUR",
        "reward_kind": "CASH",
        "offer_id": "grocery-5",
        "rule_version": 1,
        "beneficiary_id": None,
        "occurred_at": 1_796_119_200_000,
        "explanation": {
            "reason": "earned",
            "detail": "pending 5.00% of 100.00 EUR = 5.00 EUR (rounded down)",
            "basis_minor": 10_000,
            "basis_currency": "EUR",
            "rate_bps": 500,
            "rounding": "down",
            "carried_remainder": 0,
            "force_post": False,
        },
        "merchant_id": "m-grocer",
        "purchase_ref": "txn-1",
        "sponsor_id": None,  # bank-funded (accrual v6)
    }


def test_case_2_partial_clearing_releases_the_extra_pending() -> None:
    _, entries, outcomes = run_events([auth(), clearing(8_000)])
    assert outcomes == [Outcome.EARNED, Outcome.CONFIRMED]
    assert legs(entries) == [
        ("PENDING_CREATED", "EXPENSE", "PENDING", 500),
        ("CONFIRMED", "PENDING", "CONFIRMED", 400),
        ("PENDING_RELEASED", "PENDING", "EXPENSE", 100),
    ]
    assert balances(entries) == {KEY: totals(confirmed=400, lifetime=400)}


def test_case_3_partial_reversal_then_clearing() -> None:
    reversal = card_event("AUTHORIZATION_REVERSAL", 2_000)
    _, entries, outcomes = run_events([auth(3_000), reversal, clearing(1_000)])
    assert outcomes == [Outcome.EARNED, Outcome.RELEASED, Outcome.CONFIRMED]
    assert legs(entries) == [
        ("PENDING_CREATED", "EXPENSE", "PENDING", 150),
        ("PENDING_RELEASED", "PENDING", "EXPENSE", 100),
        ("CONFIRMED", "PENDING", "CONFIRMED", 50),
    ]
    assert balances(entries) == {KEY: totals(confirmed=50, lifetime=50)}


def test_case_4_incremental_authorisation_on_the_running_total() -> None:
    incremental = card_event("INCREMENTAL_AUTHORIZATION", 3_000)
    _, entries, outcomes = run_events([auth(5_000), incremental])
    assert outcomes == [Outcome.EARNED, Outcome.ADJUSTED]
    assert legs(entries) == [
        ("PENDING_CREATED", "EXPENSE", "PENDING", 250),
        ("PENDING_ADJUSTED", "EXPENSE", "PENDING", 150),
    ]
    assert entries[1].explanation.basis_minor == 8_000
    assert balances(entries) == {KEY: totals(pending=400)}


def test_case_5_multi_clearing_confirms_in_two_lines() -> None:
    first = clearing(6_000, clearing_sequence=1, clearing_count=2)
    second = clearing(4_000, clearing_sequence=2, clearing_count=2)
    state, entries, outcomes = run_events([auth(), first])
    assert legs(entries[1:]) == [("CONFIRMED", "PENDING", "CONFIRMED", 300)]
    assert balances(entries) == {KEY: totals(pending=200, confirmed=300, lifetime=300)}
    assert "(part 1 of 2)" in entries[1].explanation.detail

    _, more, outcomes = run_events([second], state=state)
    assert outcomes == [Outcome.CONFIRMED]
    assert legs(more) == [("CONFIRMED", "PENDING", "CONFIRMED", 200)]
    assert balances(entries + more) == {KEY: totals(confirmed=500, lifetime=500)}


def test_case_6_clearing_above_the_authorisation() -> None:
    _, entries, _ = run_events([auth(), clearing(12_000)])
    assert legs(entries) == [
        ("PENDING_CREATED", "EXPENSE", "PENDING", 500),
        ("CONFIRMED", "PENDING", "CONFIRMED", 500),
        ("CONFIRMED", "EXPENSE", "CONFIRMED", 100),
    ]
    assert balances(entries) == {KEY: totals(confirmed=600, lifetime=600)}
    assert all(e.explanation.basis_minor == 12_000 for e in entries[1:])


def test_case_7_force_post_is_confirmed_and_flagged() -> None:
    _, entries, outcomes = run_events([clearing()])
    assert outcomes == [Outcome.CONFIRMED]
    assert legs(entries) == [("CONFIRMED", "EXPENSE", "CONFIRMED", 500)]
    assert entries[0].explanation.force_post is True
    assert balances(entries) == {KEY: totals(confirmed=500, lifetime=500)}


def test_clearing_of_an_authorisation_is_not_a_force_post() -> None:
    _, entries, _ = run_events([auth(), clearing()])
    assert [e.explanation.force_post for e in entries] == [False, False]


def test_case_8_late_authorisation_after_its_clearing_changes_nothing() -> None:
    _, entries, outcomes = run_events([clearing(), auth()])
    assert outcomes == [Outcome.CONFIRMED, Outcome.ALREADY_SETTLED]
    assert legs(entries) == [("CONFIRMED", "EXPENSE", "CONFIRMED", 500)]
    assert balances(entries) == {KEY: totals(confirmed=500, lifetime=500)}


def test_case_9_expiry_releases_pending_and_late_clearing_confirms() -> None:
    expiry = card_event("AUTHORIZATION_EXPIRY", 10_000)
    state, entries, outcomes = run_events([auth(), expiry])
    assert outcomes == [Outcome.EARNED, Outcome.EXPIRED]
    assert legs(entries) == [
        ("PENDING_CREATED", "EXPENSE", "PENDING", 500),
        ("EXPIRED", "PENDING", "EXPENSE", 500),
    ]
    assert balances(entries) == {KEY: totals()}

    _, more, outcomes = run_events([clearing()], state=state)
    assert outcomes == [Outcome.CONFIRMED]
    assert legs(more) == [("CONFIRMED", "EXPENSE", "CONFIRMED", 500)]
    assert more[0].explanation.force_post is False
    assert balances(entries + more) == {KEY: totals(confirmed=500, lifetime=500)}


def test_case_10_partial_refund_claws_back_its_share() -> None:
    _, entries, outcomes = run_events([auth(), clearing(), after_purchase("REFUND", 4_000)])
    assert outcomes[-1] is Outcome.CLAWED_BACK
    assert legs(entries[-1:]) == [("CLAWED_BACK", "CONFIRMED", "EXPENSE", 200)]
    assert entries[-1].explanation.reason == "refund"
    # "cap headroom for that period is given back": test_rules_offer_terms.py (offers without a cap here).
    assert balances(entries) == {KEY: totals(confirmed=300, lifetime=500, clawed=200)}


def test_refunds_add_up_and_never_claw_back_more_than_was_earned() -> None:
    refunds = [after_purchase("REFUND", amount, transaction_ref=f"refund-{i}") for i, amount in enumerate((4_000, 4_000, 4_000))]
    _, entries, outcomes = run_events([auth(), clearing(), *refunds])
    assert outcomes[2:] == [Outcome.CLAWED_BACK, Outcome.CLAWED_BACK, Outcome.CLAWED_BACK]
    assert legs(entries[2:]) == [
        ("CLAWED_BACK", "CONFIRMED", "EXPENSE", 200),
        ("CLAWED_BACK", "CONFIRMED", "EXPENSE", 200),
        ("CLAWED_BACK", "CONFIRMED", "EXPENSE", 100),
    ]
    assert balances(entries) == {KEY: totals(lifetime=500, clawed=500)}


def test_case_11_chargeback_claws_all_and_its_reversal_credits_again() -> None:
    state, entries, outcomes = run_events([auth(), clearing(), after_purchase("CHARGEBACK", 10_000)])
    assert outcomes[-1] is Outcome.CLAWED_BACK
    assert legs(entries[-1:]) == [("CLAWED_BACK", "CONFIRMED", "EXPENSE", 500)]
    assert balances(entries) == {KEY: totals(lifetime=500, clawed=500)}

    _, more, outcomes = run_events([after_purchase("CHARGEBACK_REVERSAL", 10_000)], state=state)
    assert outcomes == [Outcome.RECREDITED]
    assert legs(more) == [("RECREDITED", "EXPENSE", "CONFIRMED", 500)]
    # the reversal undoes the clawback: earned once, nothing clawed back in the end
    assert balances(entries + more) == {KEY: totals(confirmed=500, lifetime=500, clawed=0)}


def test_chargeback_after_partial_refund_claws_the_rest_only() -> None:
    events = [
        auth(),
        clearing(),
        after_purchase("REFUND", 4_000),
        after_purchase("CHARGEBACK", 10_000),
        after_purchase("CHARGEBACK_REVERSAL", 10_000),
    ]
    _, entries, _ = run_events(events)
    assert legs(entries[2:]) == [
        ("CLAWED_BACK", "CONFIRMED", "EXPENSE", 200),
        ("CLAWED_BACK", "CONFIRMED", "EXPENSE", 300),
        ("RECREDITED", "EXPENSE", "CONFIRMED", 300),
    ]
    assert balances(entries) == {KEY: totals(confirmed=300, lifetime=500, clawed=200)}


def test_refund_between_clearing_parts_never_claws_back_twice() -> None:
    offers = book(offer(max_reward_per_txn_minor=300))
    events = [
        auth(),
        clearing(6_000, clearing_sequence=1, clearing_count=2),
        after_purchase("REFUND", 6_000, transaction_ref="refund-1"),
        clearing(4_000, clearing_sequence=2, clearing_count=2),
        after_purchase("REFUND", 1, transaction_ref="refund-2"),
        after_purchase("CHARGEBACK", 10_000),
    ]
    _, entries, _ = run_events(events, offers)
    assert legs(entries) == [
        ("PENDING_CREATED", "EXPENSE", "PENDING", 300),
        ("CONFIRMED", "PENDING", "CONFIRMED", 300),
        ("CLAWED_BACK", "CONFIRMED", "EXPENSE", 300),
        # part 2 earns nothing more (cap reached), the 0.01 refund and the chargeback find nothing left
    ]
    assert balances(entries) == {KEY: totals(lifetime=300, clawed=300)}


def test_case_24_same_event_twice_is_one_effect() -> None:
    event = auth()
    first = decide(event, book(), None)
    before = copy.deepcopy(first.state)
    second = decide(event, book(), first.state)
    assert second.outcome is Outcome.DUPLICATE
    assert second.entries == first.entries
    assert [e.accrual_id for e in second.entries] == [f"{event.event_id}#0"]
    assert second.state == before


def test_case_24_same_event_id_with_other_content_is_a_conflict() -> None:
    event = auth()
    first = decide(event, book(), None)
    before = copy.deepcopy(first.state)
    conflict = dataclasses.replace(event, amount_minor=99_999, billing_amount_minor=99_999)
    decision = decide(conflict, book(), first.state)
    assert decision.outcome is Outcome.DUPLICATE_CONFLICT
    assert decision.entries == ()
    assert decision.state == before


def test_redelivered_event_re_emits_its_entries_after_later_events() -> None:
    first_auth = auth()
    state, entries, _ = run_events([first_auth, clearing()])
    decision = decide(first_auth, book(), state)
    assert decision.outcome is Outcome.DUPLICATE
    assert list(decision.entries) == entries[:1]


def test_no_return_window_makes_cashback_available_at_once() -> None:
    offers = book(offer(pending_days=0))
    _, entries, outcomes = run_events([auth(), clearing()], offers)
    assert outcomes == [Outcome.EARNED, Outcome.CONFIRMED]
    assert legs(entries) == [
        ("PENDING_CREATED", "EXPENSE", "PENDING", 500),
        ("CONFIRMED", "PENDING", "CONFIRMED", 500),
        ("MADE_AVAILABLE", "CONFIRMED", "AVAILABLE", 500),
    ]
    assert balances(entries) == {KEY: totals(available=500, lifetime=500)}


def test_no_return_window_chargeback_and_reversal_use_available() -> None:
    offers = book(offer(pending_days=0))
    events = [auth(), clearing(), after_purchase("CHARGEBACK", 10_000), after_purchase("CHARGEBACK_REVERSAL", 10_000)]
    _, entries, _ = run_events(events, offers)
    assert legs(entries[3:]) == [
        ("CLAWED_BACK", "AVAILABLE", "EXPENSE", 500),
        ("RECREDITED", "EXPENSE", "AVAILABLE", 500),
    ]
    assert balances(entries) == {KEY: totals(available=500, lifetime=500, clawed=0)}


def test_accrue_on_clearing_shows_nothing_pending() -> None:
    offers = book(offer(accrue_on="CLEARING"))
    _, entries, outcomes = run_events([auth(), clearing()], offers)
    assert outcomes == [Outcome.MATCHED_ACCRUES_ON_CLEARING, Outcome.CONFIRMED]
    assert legs(entries) == [("CONFIRMED", "EXPENSE", "CONFIRMED", 500)]


@pytest.mark.parametrize("event_type", ["INCREMENTAL_AUTHORIZATION", "AUTHORIZATION_REVERSAL", "AUTHORIZATION_EXPIRY"])
def test_authorisation_follow_up_without_its_authorisation(event_type: str) -> None:
    decision = decide(card_event(event_type), book(), None)
    assert decision.outcome is Outcome.UNKNOWN_TRANSACTION
    assert decision.entries == ()


@pytest.mark.parametrize("event_type", ["REFUND", "CHARGEBACK", "CHARGEBACK_REVERSAL"])
def test_settlement_follow_up_without_a_cleared_purchase(event_type: str) -> None:
    state, _, _ = run_events([auth()])  # authorised, never cleared
    event = after_purchase(event_type, 10_000)
    decision = decide(event, book(), state)
    assert decision.outcome is Outcome.UNKNOWN_TRANSACTION
    (item,) = decision.entries  # only an item for operations to reconcile: nothing moved
    assert (item.entry_kind, item.explanation.reason, item.accrual_id) == (
        "RECONCILIATION",
        f"unknown_{event_type.lower()}",
        f"{event.event_id}#reconciliation",
    )
    assert "not cleared (status authorized)" in item.explanation.detail


def test_second_clearing_of_a_cleared_purchase_is_already_settled() -> None:
    _, entries, outcomes = run_events([auth(), clearing(), clearing()])
    assert outcomes[-1] is Outcome.ALREADY_SETTLED
    assert len(entries) == 2


# --- purity --------------------------------------------------------------------------------------


def test_decide_never_mutates_the_state_it_is_given() -> None:
    offers = book(offer(pending_days=0), offer(offer_id="everyday-1", rate_bps=100, mccs=[], stackable=True))
    purchase = auth()
    events = [
        purchase,
        card_event("INCREMENTAL_AUTHORIZATION", 3_000),
        card_event("AUTHORIZATION_REVERSAL", 1_000),
        clearing(6_000, clearing_sequence=1, clearing_count=2),
        clearing(6_000, clearing_sequence=2, clearing_count=2),
        after_purchase("REFUND", 3_000),
        after_purchase("CHARGEBACK", 12_000),
        after_purchase("CHARGEBACK_REVERSAL", 12_000),
        auth(transaction_ref="txn-2"),
        card_event("AUTHORIZATION_EXPIRY", transaction_ref="txn-2"),
        purchase,  # duplicate
        dataclasses.replace(purchase, amount_minor=1),  # conflict
    ]
    state: dict[str, Any] | None = None
    for event in events:
        before = copy.deepcopy(state)
        decision = decide(event, offers, state)
        assert state == before, event.event_type
        if decision.outcome not in (Outcome.DUPLICATE, Outcome.DUPLICATE_CONFLICT):
            assert decision.state is not state
        state = decision.state


def test_an_entry_s_record_holds_every_field_and_reads_back() -> None:
    """``Entry.record`` is spelled out for speed: it must still hold every field (and the
    explanation's), the same as the records' generic conversion, and ``Entry.of`` must read it back."""
    import msgspec

    from stream.core.entries import Entry

    for entry in decide(auth(), book(), None).entries + decide(auth(response_code="05"), book(), None).entries:
        assert entry.record() == msgspec.to_builtins(entry)
        assert Entry.of(entry.record()) == entry
