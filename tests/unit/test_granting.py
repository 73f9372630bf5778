"""stream.granting: a decision's budget grant, with the budgets behind a fake ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from stream.core.rules import decide
from stream.granting import ATTEMPTS, BudgetContention, grant
from tests.factories import auth, book, offer

BOOK = book(offer(budget_minor=1_000, currency="EUR"))
BUDGETS = {key: (amount, unit) for o in BOOK.offers for key, amount, unit in o.budget_lines()}


class AlwaysTaken:
    """Every grant is refused: another worker always gets there first."""

    def __init__(self) -> None:
        self.attempts = 0

    async def remaining(self, budgets: Mapping[str, tuple[int, str]], movement: str) -> dict[str, int]:
        return {key: 1_000 for key in budgets}

    async def apply(self, movement: str, deltas: Mapping[str, int]) -> bool:
        self.attempts += 1
        return False


def test_an_event_whose_grant_is_always_taken_gives_up_after_the_attempts() -> None:
    ledger = AlwaysTaken()
    event = auth()
    with pytest.raises(BudgetContention):
        asyncio.run(grant(lambda remaining: decide(event, BOOK, None, budget_remaining=remaining), BUDGETS, "m", ledger))
    assert ledger.attempts == ATTEMPTS


def test_an_exhausted_budget_needs_no_grant() -> None:
    class Empty(AlwaysTaken):
        async def remaining(self, budgets: Mapping[str, tuple[int, str]], movement: str) -> dict[str, int]:
            return {key: 0 for key in budgets}

    ledger = Empty()
    event = auth()
    decision = asyncio.run(grant(lambda remaining: decide(event, BOOK, None, budget_remaining=remaining), BUDGETS, "m", ledger))
    assert decision.outcome.value == "budget_exhausted" and ledger.attempts == 0
