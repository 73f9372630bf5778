"""stream.granting.BatchGrants: a batch's budget grants recorded together, against a ledger that
keeps the budgets as ``grant_budgets`` does (migration 0024; pinned against Postgres in
tests/integration/test_budget.py): every step of a call covered, all of it or none."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.events import CardEvent
from stream.core.rules import Decision, decide
from stream.core.working_copy import BEYOND_ANY_VIEW
from stream.granting import READ_MAX_AGE_S, BatchGrants, GrantsRefused, grant
from stream.store.budgets import Granted
from tests.factories import auth, book, offer
from tests.unit.test_rules_properties import OFFER_BOOKS, PROFILE, SEEDED, event_sequences

BUDGET = 1_000
BOOK = book(offer(budget_minor=BUDGET, currency="EUR"))  # grocery-5: 5% of every purchase
KEY = "grocery-5"


class Ledger:
    """One budget per key, as Postgres keeps it: used, and each movement's grant. ``taken``: what
    another worker spends just before the next call that records grants."""

    def __init__(self, used: int = 0) -> None:
        self.spent: dict[str, int] = {KEY: used}
        self.movements: dict[tuple[str, str], int] = {}
        self.taken = 0
        self.calls: list[str] = []

    async def used(self, budgets: Mapping[str, tuple[int, str]]) -> dict[str, int]:
        self.calls.append("used")
        return {key: self.spent.get(key, 0) for key in budgets}

    async def remaining(self, budgets: Mapping[str, tuple[int, str]], movement: str) -> dict[str, int]:
        self.calls.append("remaining")
        return {key: budgets[key][0] - self.spent.get(key, 0) + self.movements.get((movement, key), 0) for key in budgets}

    async def apply(self, movement: str, deltas: Mapping[str, int]) -> bool:
        self.calls.append("apply")
        return (await self._record([(movement, deltas)])).granted

    async def grant(self, grants: Sequence[tuple[str, Mapping[str, int]]], budgets: Mapping[str, tuple[int, str]]) -> Granted:
        self.calls.append("grant")
        return await self._record(grants)

    async def _record(self, grants: Sequence[tuple[str, Mapping[str, int]]]) -> Granted:
        self.spent[KEY] += self.taken
        self.taken = 0
        so_far = dict(self.spent)
        for movement, deltas in grants:
            for key, delta in deltas.items():
                so_far[key] += delta - self.movements.get((movement, key), 0)
                if not 0 <= so_far[key] <= BUDGET:
                    return Granted(False, dict(self.spent))
        self.spent = so_far
        for movement, deltas in grants:
            for key, delta in deltas.items():
                self.movements[(movement, key)] = delta
        return Granted(True, dict(self.spent))


def deciding(event: CardEvent):  # type: ignore[no-untyped-def]
    return lambda remaining: decide(event, BOOK, None, budget_remaining=remaining)


def rewards(decision: Decision) -> list[int]:
    return [entry.amount_minor for entry in decision.entries if entry.entry_kind == "PENDING_CREATED"]


@settings(max_examples=60, deadline=None)
@given(amounts=st.lists(st.integers(min_value=100, max_value=12_000), min_size=1, max_size=12), used=st.integers(0, BUDGET))
def test_a_batch_decides_and_spends_as_one_by_one_grants_would(amounts: list[int], used: int) -> None:
    """Purchases of several accounts in one batch: the same rewards and the same budget used as
    when each is read and granted at once, whether the budget binds them or not."""
    events = [auth(amount, account_id=f"acct-{n}", event_id=f"evt-{n}") for n, amount in enumerate(amounts)]

    async def one_by_one() -> tuple[list[list[int]], int]:
        ledger = Ledger(used)
        budgets = BatchGrants(ledger).budgets(BOOK)
        decided = [await grant(deciding(e), budgets, e.event_id, ledger) for e in events]
        return [rewards(d) for d in decided], ledger.spent[KEY]

    async def in_a_batch() -> tuple[list[list[int]], int]:
        ledger = Ledger(used)
        grants = BatchGrants(ledger)
        decided = [await grants.decide(deciding(e), BOOK, e.event_id, grants.settle) for e in events]
        await grants.settle(batch_ends=True)
        assert ledger.calls.count("grant") <= 1 + ledger.calls.count("apply")  # one call per batch, and one before each binding
        return [rewards(d) for d in decided], ledger.spent[KEY]

    assert asyncio.run(in_a_batch()) == asyncio.run(one_by_one())


def test_a_refused_batch_records_nothing_and_grants_one_by_one_until_the_next_batch_ends() -> None:
    async def scenario() -> None:
        ledger = Ledger()
        grants = BatchGrants(ledger)
        first, second = auth(10_000, event_id="evt-1"), auth(4_000, account_id="acct-2", event_id="evt-2")
        await grants.decide(deciding(first), BOOK, "m-1", grants.settle)
        await grants.decide(deciding(second), BOOK, "m-2", grants.settle)
        assert grants.pending == {"m-1": {KEY: 500}, "m-2": {KEY: 200}}
        ledger.taken = 600  # 6.00 of the 10.00 spent elsewhere since the read: 7.00 no longer fits
        with pytest.raises(GrantsRefused):
            await grants.settle(batch_ends=True)
        assert ledger.movements == {} and ledger.spent[KEY] == 600 and grants.pending == {}
        assert grants.one_by_one
        ledger.calls.clear()
        decision = await grants.decide(deciding(first), BOOK, "m-1", grants.settle)  # read again
        assert rewards(decision) == [400] and ledger.calls == ["remaining", "apply"]
        await grants.settle(batch_ends=True)
        assert not grants.one_by_one

    asyncio.run(scenario())


def test_what_was_read_of_the_budgets_is_read_again_once_it_is_older_than_the_bound() -> None:
    async def scenario() -> None:
        now = [0.0]
        ledger = Ledger()
        grants = BatchGrants(ledger, clock=lambda: now[0])
        for n in range(3):
            await grants.decide(deciding(auth(1_000, event_id=f"evt-{n}")), BOOK, f"m-{n}", grants.settle)
            now[0] += READ_MAX_AGE_S * 0.4
        assert ledger.calls == ["used"]  # 0.8 of the bound: the first read served all three
        now[0] += READ_MAX_AGE_S
        await grants.decide(deciding(auth(1_000, event_id="evt-3")), BOOK, "m-3", grants.settle)
        assert ledger.calls == ["used", "used"]

    asyncio.run(scenario())


def test_a_movement_already_in_the_batch_is_granted_at_once_after_the_batch() -> None:
    async def scenario() -> None:
        ledger = Ledger()
        grants = BatchGrants(ledger)
        event = auth(10_000, event_id="evt-1")
        await grants.decide(deciding(event), BOOK, "m-1", grants.settle)
        await grants.decide(deciding(event), BOOK, "m-1", grants.settle)
        assert ledger.calls == ["used", "grant", "remaining", "apply"]
        assert ledger.movements == {("m-1", KEY): 500} and ledger.spent[KEY] == 500  # its own grant, once

    asyncio.run(scenario())


# The books of the engine's properties whose offers have campaign budgets.
BUDGETED_BOOKS = sorted(name for name, b in OFFER_BOOKS.items() if any(o.budget_lines() for o in b.offers))


@SEEDED
@given(offers_name=st.sampled_from(BUDGETED_BOOKS), events=event_sequences(multi_clearing=True), data=st.data())
def test_a_decision_stands_under_any_view_leaving_more_than_its_reach(
    offers_name: str, events: list[CardEvent], data: st.DataObject
) -> None:
    """``Decision.budget_reach``: told that every budget has more left than the decision's grants
    took it to, the engine makes the very same decision (what lets a batch skip deciding again).
    What is left is drawn at or just under each reach, or above it, as often."""
    offers = OFFER_BOOKS[offers_name]
    lines = {key: amount for o in offers.offers for key, amount, _ in o.budget_lines()}
    state = None
    for event in events:
        alone = decide(event, offers, state, PROFILE)
        view = {key: data.draw(st.integers(0, amount)) for key, amount in lines.items()}
        above = data.draw(st.booleans())
        for key, reach in alone.budget_reach.items():
            if reach < BEYOND_ANY_VIEW:
                view[key] = max(0, reach + data.draw(st.integers(1, 2_000) if above else st.integers(-2, 0)))
        viewed = decide(event, offers, state, PROFILE, budget_remaining=view)
        if all(reach < view.get(key, BEYOND_ANY_VIEW) for key, reach in alone.budget_reach.items()):
            assert viewed == alone
        state = data.draw(st.sampled_from([alone.state, viewed.state]))  # go on from either


def test_a_view_leaving_exactly_the_reach_can_change_the_decision() -> None:
    """Why the reach must be exceeded, not met: at 4.00 left, the 4.00 a day's cap allows is cut by
    the budget as much as by the cap, and the entry's explanation says the budget."""
    offers = book(offer(budget_minor=700, currency="EUR", cap={"period": "day", "amount_minor": 400}))
    event = auth(10_000)  # 5.00 wanted, the cap allows 4.00
    alone = decide(event, offers, None)
    assert alone.budget_reach == {KEY: 400} and "cap 4.00 EUR per day" in alone.entries[0].explanation.detail
    assert decide(event, offers, None, budget_remaining={KEY: 401}) == alone
    met = decide(event, offers, None, budget_remaining={KEY: 400})
    assert met.budget_deltas == alone.budget_deltas and "campaign budget exhausted" in met.entries[0].explanation.detail
    assert decide(auth(20_000), book(offer(budget_minor=700, currency="EUR")), None).budget_reach == {KEY: BEYOND_ANY_VIEW}


def test_a_decision_the_read_covers_is_decided_once() -> None:
    """Read with more left than its reach, a purchase keeps the decision made with every budget
    untouched; read with exactly its reach left, it is decided again with what was read."""

    async def scenario() -> list[Mapping[str, int] | None]:
        asked: list[Mapping[str, int] | None] = []
        event = auth(10_000)

        def counting(remaining: Mapping[str, int] | None) -> Decision:
            asked.append(remaining)
            return decide(event, BOOK, None, budget_remaining=remaining)

        grants = BatchGrants(Ledger(used=BUDGET - 501))  # 5.01 left: covers the 5.00 the purchase takes
        await grants.decide(counting, BOOK, "m-1", grants.settle)
        grants = BatchGrants(Ledger(used=BUDGET - 500))  # 5.00 left: decided again with it
        await grants.decide(counting, BOOK, "m-2", grants.settle)
        return asked

    asked = asyncio.run(scenario())
    assert [remaining is None for remaining in asked] == [True, True, False]
