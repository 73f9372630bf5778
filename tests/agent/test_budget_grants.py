"""Campaign budgets granted a batch at a time (stream.granting.BatchGrants) through the matcher:
what the budget read does not bind is granted with the batch's others, in one call at the flush;
what it binds is granted at once, after the batch's grants; a batch whose grants are refused keeps
nothing, and its messages read again are granted one by one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from stream.core.rules import Outcome
from stream.store.budgets import Granted, movement_id
from tests.agent.conftest import ACCOUNT, ACCOUNT_KEY, AgentHarness, encode_auth
from tests.factories import book, card_record, offer

pytestmark = pytest.mark.asyncio


class Budgets:
    """A BudgetLedger (stream.granting) holding ``budget`` for every key, ``used`` of it already;
    with ``taken_meanwhile``, the next grant is refused: another worker spent that much since the
    budget was read. ``calls``: what the matcher asked, in order."""

    def __init__(self, budget: int, used: int = 0, taken_meanwhile: int = 0) -> None:
        self.budget, self.spent, self.taken_meanwhile = budget, used, taken_meanwhile
        self.calls: list[tuple[str, Any]] = []

    async def used(self, budgets: Mapping[str, tuple[int, str]]) -> dict[str, int]:
        self.calls.append(("used", self.spent))
        return {key: self.spent for key in budgets}

    async def remaining(self, budgets: Mapping[str, tuple[int, str]], movement: str) -> dict[str, int]:
        left = {key: self.budget - self.spent for key in budgets}
        self.calls.append(("remaining", left))
        return left

    async def apply(self, movement: str, deltas: Mapping[str, int]) -> bool:
        self.calls.append(("apply", (movement, dict(deltas))))
        self.spent += sum(deltas.values())
        return True

    async def grant(self, grants: Sequence[tuple[str, Mapping[str, int]]], budgets: Mapping[str, tuple[int, str]]) -> Granted:
        if self.taken_meanwhile:
            self.spent, self.taken_meanwhile = self.spent + self.taken_meanwhile, 0
            self.calls.append(("refused", [(movement, dict(deltas)) for movement, deltas in grants]))
            return Granted(False, {key: self.spent for key in budgets})
        self.calls.append(("grant", [(movement, dict(deltas)) for movement, deltas in grants]))
        self.spent += sum(sum(deltas.values()) for _, deltas in grants)
        return Granted(True, {key: self.spent for key in budgets})


def budgeted(harness: AgentHarness, ledger: Budgets) -> None:
    harness.matcher.offers.book = book(offer(budget_minor=ledger.budget, currency="EUR"))  # grocery-5: 5%
    harness.matcher.grants.ledger = ledger


async def test_decisions_the_budget_read_does_not_bind_are_granted_together_at_the_flush(harness: AgentHarness) -> None:
    ledger = Budgets(budget=10_000)
    budgeted(harness, ledger)
    first = card_record(amount_minor=10_000, mcc="5411")
    second = card_record(amount_minor=4_000, mcc="5411", transaction_ref="txn-2")

    await harness.put_nowait(encode_auth(harness.codec, first), ACCOUNT_KEY)
    await harness.put_nowait(encode_auth(harness.codec, second), ACCOUNT_KEY)
    await harness.wait_handled(2)

    assert [a["amount_minor"] for _, a in harness.accruals_decoded()] == [500, 200]
    grants = [
        (movement_id(ACCOUNT, first["event_id"]), {"grocery-5": 500}),
        (movement_id(ACCOUNT, second["event_id"]), {"grocery-5": 200}),
    ]
    assert ledger.calls == [("used", 0), ("grant", grants)]  # one read, then one call for the batch


async def test_a_decision_the_budget_read_binds_is_read_and_granted_at_once(harness: AgentHarness) -> None:
    ledger = Budgets(budget=1_000, used=800)
    budgeted(harness, ledger)
    record = card_record(amount_minor=10_000, mcc="5411")  # wants 5.00, 2.00 left

    handled = await harness.put(encode_auth(harness.codec, record), ACCOUNT_KEY)

    assert handled.outcome is Outcome.EARNED
    [(_, accrual)] = harness.accruals_decoded()
    assert (accrual["entry_kind"], accrual["amount_minor"]) == ("PENDING_CREATED", 200)
    movement = movement_id(ACCOUNT, record["event_id"])
    assert ledger.calls == [("used", 800), ("remaining", {"grocery-5": 200}), ("apply", (movement, {"grocery-5": 200}))]


async def test_a_batch_whose_grants_are_refused_keeps_nothing_and_read_again_is_granted_one_by_one(
    harness: AgentHarness,
) -> None:
    """Another worker spent 8.00 of the 10.00 between the read and the batch's grant: the batch's
    state and entries are dropped (its messages are read again); read again, the purchase earns
    what is left, granted at once."""
    ledger = Budgets(budget=1_000, taken_meanwhile=800)
    budgeted(harness, ledger)
    record = card_record(amount_minor=10_000, mcc="5411")
    movement = movement_id(ACCOUNT, record["event_id"])

    first = await harness.put(encode_auth(harness.codec, record), ACCOUNT_KEY)

    assert ledger.calls == [("used", 0), ("refused", [(movement, {"grocery-5": 500})])]
    assert [(tp.topic, tp.partition, offset) for tp, offset in harness.seeks] == [(first.topic, first.partition, first.offset)]
    assert harness.accruals_decoded() == [] and harness.summaries() == []
    assert harness.state() is None  # its state forgotten with the batch
    assert harness.matcher.grants.one_by_one

    handled = await harness.put(encode_auth(harness.codec, record), ACCOUNT_KEY)  # read again

    assert handled.outcome is Outcome.EARNED
    assert [(a["entry_kind"], a["amount_minor"]) for _, a in harness.accruals_decoded()] == [("PENDING_CREATED", 200)]
    assert ledger.calls[2:] == [("remaining", {"grocery-5": 200}), ("apply", (movement, {"grocery-5": 200}))]
    assert not harness.matcher.grants.one_by_one  # its batch flushed


async def test_a_decision_that_touches_no_budget_never_reads_one(harness: AgentHarness) -> None:
    ledger = Budgets(budget=0)
    harness.matcher.grants.ledger = ledger  # the default book has no budget
    await harness.put(encode_auth(harness.codec, card_record(amount_minor=10_000, mcc="5411")), ACCOUNT_KEY)
    assert ledger.calls == []
