"""The conformance scenarios (tests/conformance/cases) through the pure rules engine: each
DOMAIN.md lifecycle case gives exactly its expected ledger, reasons and balances."""

from __future__ import annotations

from typing import Any

import pytest

from stream.events import to_event, validate
from stream.offers import OfferBook
from stream.rules import balances, decide
from stream.lifecycle import due_events
from tests.conformance.scenario import (
    Scenario, account_profile, all_scenarios, comparable, entry_view, is_time, label_of,
)

SCENARIOS = all_scenarios()


def run_pure(scenario: Scenario) -> tuple[list[dict[str, Any]], list[str]]:
    """Deliver the scenario's events in order; return the ledger as Postgres would hold it
    (entry ids unique) and the outcomes."""
    offers = OfferBook.of(scenario.offers)
    profile = account_profile(scenario)
    # Budgets as the matcher grants them from Postgres: what is left is the budget less the grants.
    used = {o.offer_id: 0 for o in scenario.offers if o.budget_minor is not None}
    state = None
    ledger: dict[str, dict[str, Any]] = {}
    outcomes: list[str] = []
    for record in scenario.records:
        if is_time(record):
            now_ms = int(record["occurred_at"].timestamp() * 1000)
            events = due_events(state, scenario.account_id, now_ms)
        else:
            assert validate(record) is None, f"{scenario.name}: event {record['event_id']} is invalid"
            events = [to_event(record)]
        for event in events:
            remaining = {o.offer_id: o.budget_minor - used[o.offer_id] for o in scenario.offers if o.offer_id in used}
            decision = decide(event, offers, state, profile, budget_remaining=remaining)
            for offer_id, delta in decision.budget_deltas.items():
                used[offer_id] += delta
            state = decision.state
            outcomes.append(decision.outcome.value)
            for entry in decision.entries:
                ledger.setdefault(entry["accrual_id"], entry)
    return list(ledger.values()), outcomes


def test_every_case_of_the_domain_has_a_scenario() -> None:
    covered = {s.case for s in SCENARIOS}
    assert set(range(1, 26)) == covered


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_through_the_pure_engine(scenario: Scenario) -> None:
    entries, outcomes = run_pure(scenario)
    ledger = [entry_view(scenario, e) for e in entries if e["entry_kind"] != "NOT_EARNED"]
    assert comparable(ledger, scenario.ledger) == scenario.ledger
    not_earned = [(label_of(scenario, e["source_event_id"]), e["explanation"]["reason"]) for e in entries if e["entry_kind"] == "NOT_EARNED"]
    assert not_earned == scenario.not_earned
    got = {(kind, currency): totals for (_, kind, currency), totals in balances(entries).items()}
    assert got == scenario.balances
    if scenario.outcomes is not None:
        assert outcomes == scenario.outcomes
