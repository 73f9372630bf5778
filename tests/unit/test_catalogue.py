"""Unit tests of topics.catalogue: co-partitioning, compaction, unique names, schema subjects that exist."""

from __future__ import annotations

import pytest

from schemas.codec import load_shipped_schemas
from topics.catalogue import DAY_MS, Topic, catalogue


@pytest.mark.parametrize("partitions", [1, 4, 12])
def test_topics_keyed_by_account_are_co_partitioned(partitions: int) -> None:
    topics = catalogue(partitions=partitions)
    keyed_by_account = [t for t in topics.all() if t.key == "account_id"]
    assert {t.name for t in keyed_by_account} == {
        "cashback.card.authorizations",
        "cashback.card.settlements",
        "cashback.account-profiles",
        "cashback.accruals",
        "cashback.account-erasures",
        "cashback.account-instructions",
        "cashback.notifications",
        "cashback.payout-runs",
        "cashback.payouts",
        "cashback.payout-results",
    }
    assert all(t.co_partitioned for t in keyed_by_account)
    assert {t.partitions for t in keyed_by_account} == {partitions}
    assert all(t.partitions == partitions for t in topics.all() if t.co_partitioned)
    assert all(t.co_partitioned for t in topics.inputs())
    # Activations are keyed per (account, offer) for compaction but partitioned by account.
    assert topics.activations.co_partitioned and topics.activations.partitions == partitions


def test_inputs_are_authorisations_then_settlements_then_instructions_then_payout_runs_and_results() -> None:
    topics = catalogue()
    assert [t.name for t in topics.inputs()] == [
        "cashback.card.authorizations",
        "cashback.card.settlements",
        "cashback.account-instructions",
        "cashback.payout-runs",
        "cashback.payout-results",
    ]
    assert [t.value_subject for t in topics.inputs()] == [
        "authorization_event",
        "settlement_event",
        "account_instruction",
        "payout_run",
        "payout_result",
    ]


def test_payouts_are_keyed_by_account_co_partitioned_and_kept_30_days() -> None:
    """The core banking system reads an account's payouts in order, on the account's partition."""
    topics = catalogue(partitions=6)
    for topic, subject in ((topics.payouts, "payout_instruction"), (topics.payout_results, "payout_result")):
        assert topic.value_subject == subject and topic.key == "account_id"
        assert topic.co_partitioned and topic.partitions == 6
        assert topic.config() == {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)}
    assert topics.payouts not in topics.inputs()


def test_charities_remittances_and_answers_have_topics_of_their_own_that_the_workers_never_read() -> None:
    """A charity's answer must never reach the workers, which read payout-results as accounts' answers."""
    topics = catalogue(partitions=6)
    for topic, subject in (
        (topics.donation_payouts, "donation_instruction"),
        (topics.donation_payout_results, "donation_result"),
    ):
        assert topic.value_subject == subject and topic.key == "charity_id"
        assert not topic.co_partitioned and topic.config() == {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)}
        assert topic not in topics.inputs() and topic in topics.all()
    assert topics.donation_payout_results.name == "cashback.donation-payout-results" != topics.payout_results.name


def test_offers_and_activations_are_compacted() -> None:
    topics = catalogue()
    for topic in (topics.offers, topics.activations, topics.profiles):
        assert topic.compacted and topic.retention_ms == -1
        assert topic.config() == {
            "cleanup.policy": "compact",
            "min.compaction.lag.ms": "60000",
            "max.compaction.lag.ms": str(7 * 24 * 3600 * 1000),  # an erased value leaves the disk within a week
        }
    assert topics.offers.key == "offer_id"
    assert topics.activations.key == "account_id:offer_id"


def test_event_topics_are_deleted_after_their_retention() -> None:
    topics = catalogue()
    for topic in (*topics.inputs(), topics.accruals):
        assert topic.config() == {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)}
    assert topics.dead_letters.config() == {"cleanup.policy": "delete", "retention.ms": "7776000000"}  # 90 days
    assert not any(t.compacted for t in (*topics.inputs(), topics.accruals, topics.dead_letters))


def test_erasure_instructions_are_kept_a_week_and_folded_per_account() -> None:
    """They name accounts, so they are not kept longer than the worker needs to read them."""
    topics = catalogue()
    assert topics.erasures.config() == {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}
    assert topics.erasures.value_subject == "account_erasure"
    assert topics.account_inputs() == (topics.activations, topics.profiles, topics.erasures)


def test_notifications_are_keyed_by_account_and_kept_a_week() -> None:
    """Bank apps read an account's notifications in order (one partition per account, the card
    events' own); each names an account, so they are kept a week, not the accruals' 30 days."""
    topics = catalogue(partitions=6)
    assert topics.notifications.name == "cashback.notifications"
    assert topics.notifications.value_subject == "notification"
    assert topics.notifications.co_partitioned and topics.notifications.partitions == 6
    assert topics.notifications.config() == {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}


@pytest.mark.parametrize("prefix", ["cashback.", "test-1.", ""])
def test_names_are_unique_and_prefixed(prefix: str) -> None:
    names = [t.name for t in catalogue(prefix=prefix).all()]
    assert len(names) == len(set(names)) == 16
    assert all(name.startswith(prefix) for name in names)


def test_by_name() -> None:
    topics = catalogue(prefix="p.")
    assert topics.by_name("p.accruals") is topics.accruals
    assert topics.by_name("p.dead-letters") is topics.dead_letters
    with pytest.raises(KeyError):
        topics.by_name("cashback.accruals")


def test_every_value_subject_is_a_shipped_schema() -> None:
    subjects = {schema.subject for schema in load_shipped_schemas().values()}
    assert {t.value_subject for t in catalogue().all()} == subjects


def test_topics_are_immutable() -> None:
    topic = catalogue().offers
    assert isinstance(topic, Topic)
    with pytest.raises(AttributeError):
        topic.partitions = 8  # type: ignore[misc]
