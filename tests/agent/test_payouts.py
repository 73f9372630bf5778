"""Cash payouts in the matcher (issue 12 part 1, ``stream.core.payouts``): a payout run read from its topic
pays AVAILABLE cash out; the payout instruction is sent at the flush, only once the state is on the
changelog, right after the PAID_OUT entry, keyed by account; its delivery counts toward the input offset's
commit; a redelivered run sends the same instruction again (same payout id), moves nothing; the bank's
answers are read from theirs; a malformed answer goes to the dead-letter topic with its reason. No broker
(see conftest.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from stream.core.offer_parsing import parse_offer
from stream.core.offers import OfferBook
from stream.core.rules import Outcome
from tests.agent.conftest import ACCOUNT, ACCOUNT_KEY, AgentHarness, encode_settlement
from tests.factories import card_record

pytestmark = pytest.mark.asyncio

RUN_AT = datetime(2026, 12, 3, 2, 0, tzinfo=UTC)
PAYOUT_ID = f"p:2026-12-03T0200Z:{ACCOUNT}:EUR"


def run_value(harness: AgentHarness, run_id: str = "2026-12-03T0200Z") -> bytes:
    record = {
        "run_id": run_id,
        "account_id": ACCOUNT,
        "requested_at": RUN_AT,
        "minimums": [{"currency": "EUR", "minimum_minor": 1_000}],
        "default_minimum_minor": None,
    }
    return harness.codec.encode("payout_run", record)


def result_value(harness: AgentHarness, status: str, reason: str | None = None, payout_id: str = PAYOUT_ID) -> bytes:
    record = {"payout_id": payout_id, "account_id": ACCOUNT, "status": status, "reason_code": reason, "answered_at": RUN_AT}
    return harness.codec.encode("payout_result", record)


async def with_cash(harness: AgentHarness, amount_minor: int = 40_000) -> None:
    """5% of a cleared purchase AVAILABLE at once."""
    harness.matcher.offers.book = OfferBook.of(
        [parse_offer({"offer_id": "grocery-now", "name": "5% now", "rate_bps": 500, "mccs": ["5411"], "pending_days": 0})]
    )
    clearing = card_record("CLEARING", amount_minor=amount_minor, transaction_ref="txn-cash")
    await harness.put(encode_settlement(harness.codec, clearing), topic=harness.settlement_topic)


def payouts(harness: AgentHarness) -> list[tuple[bytes | None, dict[str, Any]]]:
    topic = harness.matcher.topics.payouts.name
    return [
        (sent.key, harness.codec.decode(sent.value, expected_subject="payout_instruction")[1])
        for sent in harness.sends.to(topic).sent
    ]


async def test_a_run_sends_the_payout_after_its_entry_and_a_redelivery_sends_the_same(harness: AgentHarness) -> None:
    await with_cash(harness)
    topics = harness.matcher.topics
    first = await harness.put(run_value(harness), ACCOUNT_KEY, topic=topics.payout_runs.name)
    assert first.outcome is Outcome.PAID_OUT
    order = [s.topic for s in harness.sends.sent if s.topic in (topics.accruals.name, topics.payouts.name)]
    assert order[-2:] == [topics.accruals.name, topics.payouts.name]  # the PAID_OUT entry, then its payout
    ((key, payout),) = payouts(harness)
    assert key == ACCOUNT_KEY
    assert payout == {
        "payout_id": PAYOUT_ID,
        "account_id": ACCOUNT,
        "amount_minor": 2_000,
        "currency": "EUR",
        "run_id": "2026-12-03T0200Z",
        "requested_at": RUN_AT,
    }
    state = harness.state()
    assert state is not None and state.wallet == {} and state.payouts[PAYOUT_ID].status == "REQUESTED"
    again = await harness.put(run_value(harness), ACCOUNT_KEY, topic=topics.payout_runs.name)
    assert again.outcome is Outcome.DUPLICATE
    once, twice = harness.sends.to(topics.payouts.name).sent
    assert once.value == twice.value  # the same payout id: the bank pays it once
    paid = [a for _, a in harness.accruals_decoded() if a["entry_kind"] == "PAID_OUT"]
    assert len(paid) == 2 and paid[0] == paid[1]  # re-emitted, same accrual id: the ledger writes it once


async def test_the_payout_leaves_only_once_the_state_is_on_the_changelog(harness: AgentHarness) -> None:
    await with_cash(harness)
    unacked = harness.hold_changelog()
    expected = len(harness.handled) + 1
    await harness.put_nowait(run_value(harness), ACCOUNT_KEY, topic=harness.matcher.topics.payout_runs.name)
    await asyncio.sleep(0.2)
    assert unacked, "the state write waits for the changelog"
    assert payouts(harness) == []
    for sent in unacked:
        sent.set_result(None)
    await harness.wait_handled(expected)
    assert [p["payout_id"] for _, p in payouts(harness)] == [PAYOUT_ID]


async def test_the_payouts_delivery_counts_toward_the_input_offset(harness: AgentHarness) -> None:
    await with_cash(harness)
    matcher = harness.matcher
    pending, staged_messages = harness.hold_deliveries(matcher.topics.payouts.name)
    await harness.put(run_value(harness), ACCOUNT_KEY, topic=matcher.topics.payout_runs.name)
    (staged,) = staged_messages
    (payout_delivery,) = pending
    assert payout_delivery in staged.deliveries
    assert not all(delivery.done() for delivery in staged.deliveries)  # not committable yet
    payout_delivery.set_result(None)
    assert all(delivery.done() for delivery in staged.deliveries)


async def test_answers_are_decided_and_a_malformed_one_is_dead_lettered(harness: AgentHarness) -> None:
    await with_cash(harness)
    topics = harness.matcher.topics
    await harness.put(run_value(harness), ACCOUNT_KEY, topic=topics.payout_runs.name)
    rejected = await harness.put(
        result_value(harness, "REJECTED", "account_closed"), ACCOUNT_KEY, topic=topics.payout_results.name
    )
    assert rejected.outcome is Outcome.PAYOUT_REJECTED
    returned = [a for _, a in harness.accruals_decoded() if a["entry_kind"] == "PAYOUT_RETURNED"]
    assert [(a["debit_book"], a["credit_book"], a["amount_minor"]) for a in returned] == [("PAID_OUT", "AVAILABLE", 2_000)]
    state = harness.state()
    assert state is not None and state.wallet == {"CASH:EUR": 2_000}
    late = await harness.put(result_value(harness, "CONFIRMED"), ACCOUNT_KEY, topic=topics.payout_results.name)
    assert late.outcome is Outcome.NO_CHANGE  # the first answer stands
    other = "p:2026-12-03T0200Z:acct-2:EUR"  # another account's payout, on this account's key
    bad = await harness.put(result_value(harness, "CONFIRMED", payout_id=other), ACCOUNT_KEY, topic=topics.payout_results.name)
    assert bad.outcome is None
    (_, letter) = harness.dead_letters_decoded()[-1]
    assert (letter["reason"], letter["detail"], letter["source_topic"]) == (
        "invalid_field",
        "field payout_id: invalid_field",
        topics.payout_results.name,
    )


async def test_a_run_dated_far_ahead_is_dead_lettered_and_pays_nothing(harness: AgentHarness) -> None:
    """A run id naming a time in 2099 would date the run there, and so its accounts' clocks: refused
    (EVENT_AHEAD_LIMIT_DAYS), the wallet left as it was, and a run of the present pays as before."""
    await with_cash(harness)
    topics = harness.matcher.topics
    record = {
        "run_id": "2099-01-01T0000Z",
        "account_id": ACCOUNT,
        "requested_at": datetime(2099, 1, 1, tzinfo=UTC),
        "minimums": [{"currency": "EUR", "minimum_minor": 1_000}],
        "default_minimum_minor": None,
    }
    refused = await harness.put(harness.codec.encode("payout_run", record), ACCOUNT_KEY, topic=topics.payout_runs.name)
    assert refused.outcome is None and payouts(harness) == []
    [(_, letter)] = harness.dead_letters_decoded()
    assert (letter["reason"], letter["source_topic"]) == ("ahead_of_clock", topics.payout_runs.name)
    assert harness.state().wallet == {"CASH:EUR": 2_000}
    paid = await harness.put(run_value(harness), ACCOUNT_KEY, topic=topics.payout_runs.name)
    assert paid.outcome is Outcome.PAID_OUT
    assert [p["amount_minor"] for _, p in payouts(harness)] == [2_000]


async def test_a_scheduled_run_falls_due_on_the_clock_once_per_run_for_the_accounts_with_cash(harness: AgentHarness) -> None:
    from topics.catalogue import account_partition

    matcher = harness.matcher
    matcher.time.payout_schedule = (120,)  # PAYOUT_SCHEDULE=02:00
    home = account_partition(ACCOUNT, matcher.topics.authorizations.partitions)
    clock = matcher.topics.clock.name

    runs = matcher.topics.payout_runs.name
    read_back = 0

    async def tick(at: datetime) -> None:
        """A tick; then what it published on the payout-runs topic, read back as the worker would read it."""
        nonlocal read_back
        value = harness.codec.encode("clock_tick", {"partition": home, "now": at})
        await harness.put(value, str(home).encode(), topic=clock, partition=home)
        published = harness.sends.to(runs).sent[read_back:]
        read_back += len(published)
        for sent in published:
            assert (sent.key, sent.partition) == (ACCOUNT_KEY, home)  # the account's own partition
            await harness.put(sent.value, sent.key, topic=runs, partition=home)

    await with_cash(harness)
    await tick(datetime(2026, 12, 3, 2, 5, tzinfo=UTC))
    assert [(p["payout_id"], p["amount_minor"], p["requested_at"]) for _, p in payouts(harness)] == [
        (PAYOUT_ID, 2_000, RUN_AT)  # run id and time: the scheduled 02:00, whenever the tick came
    ]
    assert len(harness.sends.to(runs).sent) == 1  # asked through its topic: a redelivery pays nothing twice
    await tick(datetime(2026, 12, 3, 2, 6, tzinfo=UTC))  # the same run: not again
    await tick(datetime(2026, 12, 4, 2, 1, tzinfo=UTC))  # the next run: no cash left, not asked
    assert len(payouts(harness)) == 1
    await harness.put(
        encode_settlement(harness.codec, card_record("CLEARING", amount_minor=60_000, transaction_ref="txn-more")),
        topic=harness.settlement_topic,
    )
    await tick(datetime(2026, 12, 4, 3, 0, tzinfo=UTC))  # the 04 run was applied already: waits for the next
    assert len(payouts(harness)) == 1
    await tick(datetime(2026, 12, 5, 2, 0, tzinfo=UTC))
    assert [(p["payout_id"], p["amount_minor"]) for _, p in payouts(harness)][1:] == [
        (f"p:2026-12-05T0200Z:{ACCOUNT}:EUR", 3_000)
    ]


async def test_a_confirmation_notifies_paid_after_the_changelog_and_again_when_redelivered(harness: AgentHarness) -> None:
    await with_cash(harness)
    topics = harness.matcher.topics
    await harness.put(run_value(harness), ACCOUNT_KEY, topic=topics.payout_runs.name)
    value = result_value(harness, "CONFIRMED")
    table = harness.matcher.states

    def told() -> list[dict[str, Any]]:
        return [
            harness.codec.decode(s.value, expected_subject="notification")[1]
            for s in harness.sends.to(topics.notifications.name).sent
        ]

    before = len(told())
    unacked = harness.hold_changelog()
    expected = len(harness.handled) + 1
    await harness.put_nowait(value, ACCOUNT_KEY, topic=topics.payout_results.name)
    await asyncio.sleep(0.2)
    assert unacked and len(told()) == before  # not before the changelog has the state
    for ack in unacked:
        ack.set_result(None)
    first = await harness.wait_handled(expected)
    del table.take_sends
    assert first.outcome is Outcome.PAYOUT_CONFIRMED
    paid = told()[-1]
    assert (paid["kind"], paid["amount_minor"], paid["currency"], paid["line"]) == (
        "PAID",
        2_000,
        "EUR",
        "EUR 20.00 cashback paid to your account.",
    )
    again = await harness.put(value, ACCOUNT_KEY, topic=topics.payout_results.name)
    assert again.outcome is Outcome.DUPLICATE
    resent = harness.sends.to(topics.notifications.name).sent[-1]
    assert harness.codec.decode(resent.value, expected_subject="notification")[1] == paid  # same id, same content


async def test_a_state_stored_before_wallets_is_skipped_until_an_opening_from_a_ledger_that_caught_up(
    harness: AgentHarness,
) -> None:
    import msgspec

    from stream.payout_runs import opening_record
    from topics.catalogue import account_partition

    await with_cash(harness)
    matcher, topics = harness.matcher, harness.matcher.topics
    state = harness.state()
    assert state is not None and state.wallet == {"CASH:EUR": 2_000}
    # As an earlier version stored it: a summary without a wallet.
    home = account_partition(ACCOUNT, topics.authorizations.partitions)
    matcher.accounts.write(ACCOUNT, state, msgspec.structs.replace(state, wallet=None), home)
    skipped = await harness.put(run_value(harness, "r1"), ACCOUNT_KEY, topic=topics.payout_runs.name)
    assert skipped.outcome is Outcome.WALLET_UNKNOWN and payouts(harness) == []

    money = [a["accrual_id"] for _, a in harness.accruals_decoded() if a["entry_kind"] not in ("NOT_EARNED", "RECONCILIATION")]
    ledger = [("CASH", "EUR", 2_000)]

    def opening(opening_id: str, last: str | None) -> bytes:
        return harness.codec.encode("payout_run", opening_record(opening_id, ACCOUNT, RUN_AT, "ops-1", last, ledger))

    behind = await harness.put(opening("open-1", money[0]), ACCOUNT_KEY, topic=topics.payout_runs.name)
    assert behind.outcome is Outcome.LEDGER_BEHIND  # the ledger had not the worker's latest entry yet
    opened = await harness.put(opening("open-2", money[-1]), ACCOUNT_KEY, topic=topics.payout_runs.name)
    assert opened.outcome is Outcome.WALLET_OPENED
    state = harness.state()
    assert state is not None and state.wallet == {"CASH:EUR": 2_000}
    paid = await harness.put(run_value(harness, "r2"), ACCOUNT_KEY, topic=topics.payout_runs.name)
    assert paid.outcome is Outcome.PAID_OUT
    assert [(p["run_id"], p["amount_minor"]) for _, p in payouts(harness)] == [("r2", 2_000)]


async def test_a_payout_message_for_an_account_never_seen_is_dead_lettered_not_made_a_state(harness: AgentHarness) -> None:
    topics = harness.matcher.topics
    record = {
        "run_id": "r1",
        "account_id": "acct-never",
        "requested_at": RUN_AT,
        "minimums": [],
        "default_minimum_minor": 1,
        "wallet_opening": None,
    }
    handled = await harness.put(harness.codec.encode("payout_run", record), b"acct-never", topic=topics.payout_runs.name)
    assert handled.outcome is None and harness.state("acct-never") is None
    (_, letter) = harness.dead_letters_decoded()[-1]
    assert (letter["reason"], letter["source_topic"]) == ("unknown_account", topics.payout_runs.name)
