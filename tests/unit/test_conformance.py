"""The conformance scenarios (tests/conformance/cases) through the pure rules engine: each
DOMAIN.md lifecycle case gives exactly its expected ledger, reasons and balances."""

from __future__ import annotations

from typing import Any

import pytest

from stream.backtest import Replay
from stream.core.balances import balances
from stream.core.entries import moves_money
from stream.core.events import to_event, validate
from stream.core.offers import OfferBook
from tests.conformance.scenario import (
    Scenario,
    all_scenarios,
    comparable,
    comparable_notifications,
    entry_view,
    is_time,
    label_of,
    names_offer,
    notification_view,
    stored_profile,
)

SCENARIOS = all_scenarios()


def run_pure(scenario: Scenario) -> tuple[list[dict[str, Any]], list[str], Replay]:
    """Deliver the scenario's events in order through the back-test (the matcher's fold, budgets
    and time passing included); return the ledger as Postgres would hold it and the outcomes."""
    replay = Replay(OfferBook.of(scenario.offers), keep_notifications=True)
    replay.profiles[scenario.account_id] = stored_profile(scenario)
    for record in scenario.records:
        if is_time(record):
            replay.pass_time(record["occurred_at"])
            continue
        assert validate(record) is None, f"{scenario.name}: event {record['event_id']} is invalid"
        replay.decide(to_event(record))
    return list(replay.entries.values()), replay.outcomes, replay


def test_every_case_of_the_domain_has_a_scenario() -> None:
    covered = {s.case for s in SCENARIOS}
    assert set(range(1, 26)) <= covered  # 26 on: the cases of later issues


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_through_the_pure_engine(scenario: Scenario) -> None:
    entries, outcomes, replay = run_pure(scenario)
    ledger = [entry_view(scenario, e.record()) for e in entries if moves_money(e.entry_kind)]
    assert comparable(ledger, scenario.ledger) == scenario.ledger
    # the lines that move nothing and that Postgres keeps with the purchases that earned nothing (a refused redemption too)
    lines = ("NOT_EARNED", "REDEMPTION_REFUSED")
    not_earned = [(label_of(scenario, e.source_event_id), e.explanation.reason) for e in entries if e.entry_kind in lines]
    assert not_earned == scenario.not_earned
    for label, reason, offer_id in scenario.not_earned_offers:  # the line names its offer, on the entry and in the detail
        assert any(
            label_of(scenario, e.source_event_id) == label
            and e.explanation.reason == reason
            and e.offer_id == offer_id
            and names_offer(e.explanation.detail, offer_id)
            for e in entries
        ), (label, reason, offer_id)
    for key, used in scenario.budgets_used.items():
        assert replay.budget_used.get(key, 0) == used, key
    got = {(kind, currency): totals for (_, kind, currency), totals in balances(entries).items()}
    assert got == scenario.balances
    if scenario.outcomes is not None:
        assert outcomes == scenario.outcomes
    if scenario.notifications is not None:  # what the customer is told (stream.core.notices)
        told = [notification_view(scenario, n.record()) for n in replay.notifications()]
        assert comparable_notifications(told, scenario.notifications) == scenario.notifications
