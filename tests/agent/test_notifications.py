"""Customer notifications from the matcher (issue 12 part 3, ``stream.core.notices``): sent at the
flush, after the batch's states are on the changelog and after their entries, keyed by account;
their deliveries count toward the input offset's commit like the entries'; a redelivered event
re-sends the same ids; the account's language comes from its profile; a tick at a lot's notice
time sends one EXPIRING notification, once. No broker (see conftest.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from stream.core.offer_parsing import parse_offer
from stream.core.offers import OfferBook
from stream.core.rules import Outcome
from tests.agent.conftest import ACCOUNT, ACCOUNT_KEY, AgentHarness, encode_auth, encode_settlement
from tests.factories import card_record
from topics.catalogue import account_partition

pytestmark = pytest.mark.asyncio


def notifications(harness: AgentHarness) -> list[tuple[bytes | None, dict[str, Any]]]:
    topic = harness.matcher.topics.notifications.name
    return [
        (sent.key, harness.codec.decode(sent.value, expected_subject="notification")[1]) for sent in harness.sends.to(topic).sent
    ]


async def set_language(harness: AgentHarness, language: str | None) -> None:
    profile = {"account_id": ACCOUNT, "segments": [], "updated_at": datetime(2026, 1, 1, tzinfo=UTC), "language": language}
    await harness.put(
        harness.codec.encode("account_profile", profile),
        ACCOUNT_KEY,
        topic=harness.matcher.topics.profiles.name,
        partition=account_partition(ACCOUNT, harness.matcher.topics.authorizations.partitions),
    )


async def test_an_earning_purchase_notifies_after_its_entry_with_the_entrys_id(harness: AgentHarness) -> None:
    auth = card_record(amount_minor=10_000, transaction_ref="txn-n1")
    clearing = card_record("CLEARING", amount_minor=10_000, transaction_ref="txn-n1")
    await harness.put(encode_auth(harness.codec, auth))
    await harness.put(encode_settlement(harness.codec, clearing), topic=harness.settlement_topic)

    topics = harness.matcher.topics
    order = [sent.topic for sent in harness.sends.sent if sent.topic in (topics.accruals.name, topics.notifications.name)]
    assert order == [topics.accruals.name, topics.notifications.name] * 2  # each decision: its entries, then its notifications
    sent = notifications(harness)
    assert [key for key, _ in sent] == [ACCOUNT_KEY, ACCOUNT_KEY]  # the account's partition: in its order
    assert [n["kind"] for _, n in sent] == ["EARNED", "CONFIRMED"]
    accrual_ids = [accrual["accrual_id"] for _, accrual in harness.accruals_decoded()]
    assert [n["notification_id"] for _, n in sent] == accrual_ids
    earned = sent[0][1]
    assert (earned["account_id"], earned["amount_minor"], earned["currency"], earned["reward_kind"]) == (
        ACCOUNT,
        500,
        "EUR",
        "CASH",
    )
    assert earned["language"] == "en"
    assert earned["line"] == "You earned EUR 5.00 cashback (5% of EUR 100.00), pending until the purchase settles."
    assert earned["offer_id"] == "grocery-5" and earned["expires_at"] is None


async def test_notifications_leave_only_once_the_state_is_on_the_changelog(harness: AgentHarness) -> None:
    unacked = harness.hold_changelog()
    expected = len(harness.handled) + 1
    await harness.put_nowait(encode_auth(harness.codec, card_record(amount_minor=10_000)))
    await asyncio.sleep(0.2)
    assert unacked, "the state write waits for the changelog"
    assert notifications(harness) == []
    for sent in unacked:
        sent.set_result(None)
    await harness.wait_handled(expected)
    assert [n["kind"] for _, n in notifications(harness)] == ["EARNED"]


async def test_the_notifications_delivery_counts_toward_the_input_offset(harness: AgentHarness) -> None:
    """The offset is committable only once every send made for it was delivered
    (``Staged.deliveries``, ``stream.progress``): the notification's delivery is among them, and
    among the decision's in-flight sends."""
    matcher = harness.matcher
    pending, staged_messages = harness.hold_deliveries(matcher.topics.notifications.name)
    await harness.put(encode_auth(harness.codec, card_record(amount_minor=10_000)))
    (staged,) = staged_messages
    (notification_delivery,) = pending
    assert notification_delivery in staged.deliveries
    assert not all(delivery.done() for delivery in staged.deliveries)  # not committable yet
    assert matcher.outbox.in_flight.count(ACCOUNT) == 1  # the decision is still in flight
    notification_delivery.set_result(None)
    assert all(delivery.done() for delivery in staged.deliveries)
    assert matcher.outbox.in_flight.count(ACCOUNT) == 0


async def test_a_redelivered_event_resends_the_same_notification(harness: AgentHarness) -> None:
    value = encode_auth(harness.codec, card_record(amount_minor=10_000))
    first = await harness.put(value)
    second = await harness.put(value)
    assert (first.outcome, second.outcome) == (Outcome.EARNED, Outcome.DUPLICATE)
    topic = harness.matcher.topics.notifications.name
    once, again = harness.sends.to(topic).sent
    assert once.value == again.value and once.key == again.key  # same id, same bytes: the consumer dedupes by id


async def test_the_accounts_language_comes_from_its_profile(harness: AgentHarness) -> None:
    await set_language(harness, "fr")
    await harness.put(encode_auth(harness.codec, card_record(amount_minor=10_000, transaction_ref="txn-fr")))
    await set_language(harness, None)  # a profile without one: the bank's default (NOTIFICATION_DEFAULT_LANGUAGE)
    await harness.put(encode_auth(harness.codec, card_record(amount_minor=2_000, transaction_ref="txn-en")))
    (_, french), (_, english) = notifications(harness)
    assert french["language"] == "fr"
    assert (
        french["line"]
        == "Vous avez gagné 5,00\u00a0€ de cashback (5\u202f% de 100,00\u00a0€), en attente du règlement de l'achat."
    )
    assert english["language"] == "en" and english["line"].startswith("You earned EUR 1.00 cashback")


async def test_a_tick_at_the_notice_time_sends_one_expiring_notification(harness: AgentHarness) -> None:
    harness.matcher.offers.book = OfferBook.of(
        [
            parse_offer(
                {
                    "offer_id": "grocery-points",
                    "name": "2 points per euro",
                    "reward_kind": "POINTS",
                    "points_per_unit": 2,
                    "currency": "EUR",
                    "mccs": ["5411"],
                    "pending_days": 0,
                    "available_expiry_days": 30,
                    "expiry_notice_days": 7,
                }
            )
        ]
    )
    clearing = card_record("CLEARING", amount_minor=10_000, transaction_ref="txn-points")
    await harness.put(encode_settlement(harness.codec, clearing), topic=harness.settlement_topic)
    assert [n["kind"] for _, n in notifications(harness)] == ["CONFIRMED", "AVAILABLE"]
    home = account_partition(ACCOUNT, harness.matcher.topics.authorizations.partitions)
    clock = harness.matcher.topics.clock.name
    lot = harness.state().lots[0]

    async def tick(at_ms: int) -> None:
        now = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
        await harness.put(
            harness.codec.encode("clock_tick", {"partition": home, "now": now}), str(home).encode(), topic=clock, partition=home
        )

    await tick(lot.notice_ms - 1)
    assert len(notifications(harness)) == 2
    await tick(lot.notice_ms + 1000)
    await tick(lot.notice_ms + 2000)  # a later tick (or a redelivered one): nothing more
    sent = notifications(harness)
    assert [n["kind"] for _, n in sent] == ["CONFIRMED", "AVAILABLE", "EXPIRING"]
    _, expiring = sent[-1]
    assert expiring["notification_id"] == f"expiry_notice:{ACCOUNT}:txn-points:{lot.notice_ms}#grocery-points:PTS"
    assert (expiring["amount_minor"], expiring["currency"], expiring["reward_kind"]) == (200, "PTS", "POINTS")
    assert expiring["expires_at"] == datetime.fromtimestamp(lot.expires_ms / 1000, tz=UTC)
    last_day = datetime.fromtimestamp((lot.expires_ms - 1) / 1000, tz=UTC)
    assert expiring["line"] == f"You have 200 points left to use by {last_day.day} {last_day:%B %Y}."
    assert harness.state().lots[0].noticed
    kinds = [accrual["entry_kind"] for _, accrual in harness.accruals_decoded() if accrual["entry_kind"] != "RECONCILIATION"]
    assert kinds == ["CONFIRMED", "MADE_AVAILABLE"]  # the notice is no entry (the force post's reconciliation item aside)
    await tick(lot.expires_ms + 1)
    assert [n["kind"] for _, n in notifications(harness)] == [
        "CONFIRMED",
        "AVAILABLE",
        "EXPIRING",
    ]  # the expiry itself: an entry only
    assert [accrual["entry_kind"] for _, accrual in harness.accruals_decoded()][-1] == "AVAILABLE_EXPIRED"
