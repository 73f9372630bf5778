"""Granting campaign budgets to decisions, across every worker: one decision at a time, or a batch's together.

The engine is pure: told how much of each budget is left, it says what the event consumes or gives
back (``Decision.budget_deltas``). ``grant`` turns that into a grant that holds across partitions
and workers: decide first as if every budget were untouched; only when that touches a budget, read
what is really left, decide again and apply the grant atomically; when another worker got there
first, read and decide again (deciding is free). The budgets themselves sit behind
``BudgetLedger``: Postgres in the workers (``PostgresBudgets``), a fake in the agent tests.

A worker grants a batch's decisions together (``BatchGrants``): one round trip when the batch is
flushed, before any of its states leaves, instead of a read and a grant per decision (seven round
trips, on the agent's path). A decision that touches a budget is first decided with what the
worker last read of the budgets, less what the batch's decisions already took. When that does not
bind (the same decision as with every budget untouched), it joins the batch's grants; otherwise
the batch's grants are recorded first and the decision takes the path above, budget read and
granted at once. The batch's grants are recorded all or none (``stream.store.budgets``); refused
(another worker took the budget since it was read), nothing of the batch is kept: its messages are
read again (``stream.outbox``), each decision then granted at once until a batch is flushed.

Deciding with what was read is skipped when the first decision shows it would change nothing: the
engine reads a budget only to bound a grant, and reports, per budget, the most its grants took it
to, one after another (``Decision.budget_reach``). Where each budget has more than that left,
every grant, and so the decision, is the same (``tests/unit/test_batch_grants.py`` pins it).

Why that is the same as granting one by one: a decision the budget does not bind is the one the
engine makes whatever the budget left, as long as it covers the decision; the call that records
the batch checks, for each budget, every step of the batch in order, as one-by-one grants would
(``tests/unit/test_batch_grants.py``, ``tests/integration/test_budget.py``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Protocol, TypeVar

from stream.core.offers import OfferBook
from stream.core.rules import Decision
from stream.core.working_copy import BEYOND_ANY_VIEW
from stream.metrics import BUDGET_BATCHES_REFUSED, observe_budgets
from stream.store.availability import until_postgres_answers
from stream.store.budgets import BudgetStore, Granted

ATTEMPTS = 20  # decide-and-grant rounds before an event is given up as contended
# How old what a worker read of the budgets may be when a decision is made with it (the default of
# BUDGET_READ_MAX_AGE_S): older, it is read again (one round trip). Recording a batch's grants reads
# them too. A stale read costs at worst a refused batch, read again: it never grants what the budget
# does not cover.
READ_MAX_AGE_S = 1.0

T = TypeVar("T")

# budget key -> (amount in minor units, unit): what the offer book defines (Offer.budget_lines)
Budgets = Mapping[str, tuple[int, str]]


class BudgetContention(RuntimeError):
    """No grant after ``ATTEMPTS`` rounds: other workers kept taking the budget first."""


class GrantsRefused(RuntimeError):
    """A batch's grants were not recorded: a budget no longer covers them (another worker took it)."""


class BudgetLedger(Protocol):
    async def remaining(self, budgets: Budgets, movement: str) -> dict[str, int]:
        """What is left of each budget, counting what ``movement`` already holds as its own."""
        ...

    async def apply(self, movement: str, deltas: Mapping[str, int]) -> bool:
        """Record the movement's grants atomically; False (nothing changed) if one no longer fits."""
        ...

    async def used(self, budgets: Budgets) -> dict[str, int]:
        """What each budget has used."""
        ...

    async def grant(self, grants: Sequence[tuple[str, Mapping[str, int]]], budgets: Budgets) -> Granted:
        """Record every one of ``grants`` (movement and its grants) in order, or none if a budget
        does not cover a step; and what each of ``budgets`` has used after."""
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
        left = await self._answer(budgets, lambda: self.store.remaining(budgets, movement))
        observe_budgets(budgets, left)  # what is left, read anyway: the budget gauges (stream.metrics)
        return left

    async def apply(self, movement: str, deltas: Mapping[str, int]) -> bool:
        return await until_postgres_answers(lambda: self.store.apply(movement, deltas), "budgets", self._outage)

    async def used(self, budgets: Budgets) -> dict[str, int]:
        used = await self._answer(budgets, lambda: self.store.used_of(budgets))
        _observe_used(budgets, used)
        return used

    async def grant(self, grants: Sequence[tuple[str, Mapping[str, int]]], budgets: Budgets) -> Granted:
        granted = await self._answer(budgets, lambda: self.store.grant(grants, budgets))
        _observe_used(budgets, granted.used)
        return granted

    async def _answer(self, budgets: Budgets, call: Callable[[], Awaitable[T]]) -> T:
        """``call``'s answer once ``budgets`` are defined, waiting for Postgres while it is away."""

        async def defined_then_called() -> T:
            await self.store.define(budgets)
            return await call()

        return await until_postgres_answers(defined_then_called, "budgets", self._outage)

    async def _outage(self, _: BaseException) -> None:
        await self.store.close()


def _observe_used(budgets: Budgets, used: Mapping[str, int]) -> None:
    """The budget gauges from what each budget has used."""
    observe_budgets(budgets, {key: budgets[key][0] - n for key, n in used.items() if key in budgets})


class _Left(Mapping[str, int]):
    """What a batch's decisions may take of each budget: its amount, less what the worker last
    read it had used, less what the batch's earlier decisions took."""

    def __init__(self, budgets: Budgets, used: Mapping[str, int], moving: Mapping[str, int]) -> None:
        self._budgets, self._used, self._moving = budgets, used, moving

    def __getitem__(self, key: str) -> int:
        return max(0, self._budgets[key][0] - self._used.get(key, 0) - self._moving.get(key, 0))

    def __iter__(self) -> Iterator[str]:
        return iter(self._budgets)

    def __len__(self) -> int:
        return len(self._budgets)


class BatchGrants:
    """The budget grants of the decisions of one batch, recorded together by ``settle`` before any
    of the batch's states leaves (the module doc says why that is the same as one by one)."""

    def __init__(
        self, ledger: BudgetLedger, read_max_age_s: float = READ_MAX_AGE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ledger = ledger
        self.read_max_age_s = read_max_age_s
        self.clock = clock
        self.pending: dict[str, dict[str, int]] = {}  # movement -> its grants, in the order decided
        self._moving: Counter[str] = Counter()  # budget key -> what the pending grants take of it in all
        self._used: dict[str, int] = {}  # budget key -> what it had used when last read
        self._read_at: float | None = None
        self._book: OfferBook | None = None
        self._budgets: Budgets = {}
        # After a refused batch, every grant is recorded as it is decided until the end of the next
        # batch flushed: the batch read again is not refused twice for the same reason.
        self.one_by_one = False

    def budgets(self, book: OfferBook) -> Budgets:
        """The campaign budgets of ``book`` (key: amount and unit), worked out once per book."""
        if self._book is not book:
            self._budgets = {key: (amount, unit) for o in book.offers for key, amount, unit in o.budget_lines()}
            self._book = book
        return self._budgets

    async def decide(
        self,
        decide: Callable[[Mapping[str, int] | None], Decision],
        book: OfferBook,
        movement: str,
        settle: Callable[[], Awaitable[None]],
    ) -> Decision:
        """The decision ``decide(budget_remaining)`` gives, its grant joined to the batch's, or
        recorded at once (after ``settle``, which records the batch's) when the budget read binds it."""
        decision = decide(None)
        if not decision.budget_deltas:
            return decision
        budgets = self.budgets(book)
        if not self.one_by_one and movement not in self.pending:
            now = self.clock()
            if self._read_at is None or now - self._read_at > self.read_max_age_s:
                self._used.update(await self.ledger.used(budgets))
                self._read_at = now
            left = _Left(budgets, self._used, self._moving)
            # Left more than each of its grants took a budget to, the decision stands as it is; else decide with what is left.
            covered = all(reach < left.get(key, BEYOND_ANY_VIEW) for key, reach in decision.budget_reach.items())
            tentative = decision if covered else decide(left)
            if tentative.budget_deltas == decision.budget_deltas:  # what is left does not bind it
                self.pending[movement] = dict(decision.budget_deltas)
                self._moving.update(decision.budget_deltas)
                return tentative
        await settle()  # the batch's grants first: what is read next counts them
        granted = await grant(decide, budgets, movement, self.ledger)
        for key, delta in granted.budget_deltas.items():  # what was read no longer counts it
            self._used[key] = self._used.get(key, 0) + delta
        return granted

    async def settle(self, batch_ends: bool = False) -> None:
        """Record the batch's grants, all or none (one round trip); GrantsRefused when a budget no
        longer covers them: nothing is recorded, and the batch must not be kept. ``batch_ends``:
        the batch is being flushed (recorded, it ends the grants one by one after a refusal)."""
        if self.pending:
            await self._record()
        if batch_ends:
            self.one_by_one = False

    async def _record(self) -> None:
        grants = list(self.pending.items())
        answer = await self.ledger.grant(grants, self._budgets)
        self.pending, self._moving = {}, Counter()
        self._used.update(answer.used)
        self._read_at = self.clock()
        if not answer.granted:
            self.one_by_one = True
            BUDGET_BATCHES_REFUSED.inc()
            raise GrantsRefused(f"{len(grants)} grants of the batch no longer covered by their budgets")
