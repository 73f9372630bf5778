"""Granting campaign budgets to one decision, across every worker.

The engine is pure: told how much of each budget is left, it says what the event consumes or gives
back (``Decision.budget_deltas``). ``grant`` turns that into a grant that holds across partitions
and workers: decide first as if every budget were untouched; only when that touches a budget, read
what is really left, decide again and apply the grant atomically; when another worker got there
first, read and decide again (deciding is free). The budgets themselves sit behind
``BudgetLedger``: Postgres in the workers (``PostgresBudgets``), a fake in the agent tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from stream.core.rules import Decision
from stream.metrics import observe_budgets
from stream.store.availability import until_postgres_answers
from stream.store.budgets import BudgetStore

ATTEMPTS = 20  # decide-and-grant rounds before an event is given up as contended

# budget key -> (amount in minor units, unit): what the offer book defines (Offer.budget_lines)
Budgets = Mapping[str, tuple[int, str]]


class BudgetContention(RuntimeError):
    """No grant after ``ATTEMPTS`` rounds: other workers kept taking the budget first."""


class BudgetLedger(Protocol):
    async def remaining(self, budgets: Budgets, movement: str) -> dict[str, int]:
        """What is left of each budget, counting what ``movement`` already holds as its own."""
        ...

    async def apply(self, movement: str, deltas: Mapping[str, int]) -> bool:
        """Record the movement's grants atomically; False (nothing changed) if one no longer fits."""
        ...


async def grant(
    decide: Callable[[Mapping[str, int] | None], Decision], budgets: Budgets, movement: str, ledger: BudgetLedger
) -> Decision:
    """The decision ``decide(budget_remaining)`` gives once its budget grant is applied."""
    decision = decide(None)
    if not decision.budget_deltas:
        return decision
    for _ in range(ATTEMPTS):
        decision = decide(await ledger.remaining(budgets, movement))
        if not decision.budget_deltas or await ledger.apply(movement, decision.budget_deltas):
            return decision
    raise BudgetContention(f"no budget grant after {ATTEMPTS} attempts")


class PostgresBudgets:
    """The budgets in Postgres (stream.store.budgets), waiting for Postgres when it is away: an
    outage blocks the partition, it never skips the event."""

    def __init__(self, store: BudgetStore) -> None:
        self.store = store

    async def remaining(self, budgets: Budgets, movement: str) -> dict[str, int]:
        async def read() -> dict[str, int]:
            await self.store.define(budgets)
            return await self.store.remaining(budgets, movement)

        left = await until_postgres_answers(read, "budgets", self._outage)
        observe_budgets(budgets, left)  # what is left, read anyway: the budget gauges (stream.metrics)
        return left

    async def apply(self, movement: str, deltas: Mapping[str, int]) -> bool:
        return await until_postgres_answers(lambda: self.store.apply(movement, deltas), "budgets", self._outage)

    async def _outage(self, _: BaseException) -> None:
        await self.store.close()
