"""The pieces of a GDPR erasure that need no server: the messages it publishes
(``stream.account_messages``), the account states' deletion of every key of an account
(``AccountStates.erase``), the profile table's erased marker, and the command line's arguments."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import GroupAuthorizationFailedError, GroupCoordinatorNotAvailableError, NotCoordinatorForGroupError
from aiokafka.structs import OffsetAndMetadata

from schemas.codec import Codec
from stream import gdpr
from stream.account_messages import erasure_message, tombstones
from stream.account_profiles import erased_key
from stream.account_states import AccountStates
from stream.changelog_table import DELETED
from stream.cli import parser
from stream.core.rules import decide
from stream.settings import Settings
from tests.factories import book, card_event, generated_card_number
from tests.unit.test_account_states_batches import StagedTable
from topics.catalogue import account_partition, catalogue

ACCOUNT = "acct-1"
AT = datetime(2026, 12, 1, tzinfo=UTC)


def test_the_erasure_publishes_a_tombstone_per_key_of_the_account_on_its_partition() -> None:
    topics = catalogue(partitions=8)
    home = account_partition(ACCOUNT, 8)
    messages = tombstones(ACCOUNT, ["grocery-5", "dining-3", "grocery-5"], topics.profiles, topics.activations)
    assert messages == [
        (topics.profiles.name, b"acct-1", None, home),
        (topics.activations.name, b"acct-1:dining-3", None, home),
        (topics.activations.name, b"acct-1:grocery-5", None, home),
    ]
    partition, key, value = erasure_message(Codec(), ACCOUNT, AT, topics.erasures.partitions)
    assert (partition, key) == (home, b"acct-1")
    assert Codec().decode(value, expected_subject="account_erasure")[1] == {"account_id": ACCOUNT, "requested_at": AT}


def test_the_erased_marker_is_the_accounts_digest_and_never_an_account_key() -> None:
    key = erased_key(ACCOUNT)
    assert key.endswith(hashlib.sha256(b"acct-1").hexdigest()) and ACCOUNT not in key
    assert key.startswith("\x1f")  # no account id holds the separator: never another account's profile


def test_erase_stages_a_deletion_of_every_key_the_account_has_or_had_pending() -> None:
    """Its stored summary and rows, a row no summary names (a cut step), the batch's pending writes;
    never a key of an account whose id merely starts the same."""
    table = StagedTable()
    states = AccountStates(table, partitions=4)  # type: ignore[arg-type]
    before = None
    for n, event in enumerate([card_event("AUTHORIZATION", 10_000, transaction_ref=f"txn-{n}") for n in range(3)]):
        after = decide(event, book(), before).state
        states.write(ACCOUNT, before, after, 2)
        before = after
        if n == 1:
            states.hand_over()
            table.settle()
    table.store[f"{ACCOUNT}\x1ft\x1forphan"] = b"left by a cut step"
    table.store["acct-10"] = table.store["acct-10\x1ft\x1fx"] = b"another account"
    stored = {key for key in table.store if key.startswith(ACCOUNT + "\x1f") or key == ACCOUNT}
    assert states.pending  # the third purchase is not handed over yet

    deleted = states.erase(ACCOUNT, 2)

    assert deleted[0] == ACCOUNT
    assert set(deleted) >= stored | {f"{ACCOUNT}\x1ft\x1ftxn-2"}  # the pending one too
    assert not any(key.startswith("acct-10") for key in deleted)
    assert table.staged == [(key, DELETED, 2) for key in deleted]
    assert states.pending == {} and states.hand_over() == []
    table.settle()
    assert states.get(ACCOUNT) is None and set(table.store) == {"acct-10", "acct-10\x1ft\x1fx"}
    assert states.due(2, 2**62) == []


def test_the_command_line_takes_an_erasure_with_a_reason_only() -> None:
    args = parser().parse_args(["gdpr", "erase", ACCOUNT, "--reason", " DSR-1 ", "--operator", "dpo"])
    assert (args.account_id, args.reason, args.operator, args.timeout) == (ACCOUNT, "DSR-1", "dpo", 120.0)
    assert parser().parse_args(["gdpr", "export", ACCOUNT]).action == "export"
    for missing in (["gdpr", "erase", ACCOUNT], ["gdpr", "erase", ACCOUNT, "--reason", "  "]):
        with pytest.raises(SystemExit) as stopped:
            parser().parse_args(missing)
        assert stopped.value.code == 2


class Offsets:
    """An admin client whose group offsets read fails with ``errors`` first, then shows ``committed``."""

    def __init__(self, errors: list[Exception], committed: int) -> None:
        self.errors, self.committed, self.asked, self.closed = errors, committed, 0, False

    def __call__(self, **_: object) -> Offsets:
        return self

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True

    async def list_consumer_group_offsets(self, group: str, partitions: list[TopicPartition]) -> dict[TopicPartition, Any]:
        self.asked += 1
        if self.errors:
            raise self.errors.pop(0)
        return {partitions[0]: OffsetAndMetadata(self.committed, "")}


async def committed_to(monkeypatch: pytest.MonkeyPatch, admin: Offsets, offset: int, timeout_s: float = 5.0) -> bool:
    monkeypatch.setattr(gdpr, "AIOKafkaAdminClient", admin)
    monkeypatch.setattr(gdpr, "POLL_S", 0.01)
    return await gdpr._committed_to(Settings(), "cashback", TopicPartition("erasures", 0), offset, timeout_s)


@pytest.mark.asyncio
async def test_the_erasure_waits_while_the_group_coordinator_is_not_known_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh cluster (its offsets topic still being made) or a coordinator moving answers
    GroupCoordinatorNotAvailable: the wait for the worker asks again, where it used to fail the
    request with a 500. aiokafka marks that error retriable, which the wait relies on."""
    assert GroupCoordinatorNotAvailableError.retriable and NotCoordinatorForGroupError.retriable
    admin = Offsets([GroupCoordinatorNotAvailableError(), NotCoordinatorForGroupError()], committed=8)
    assert await committed_to(monkeypatch, admin, 8)
    assert admin.asked == 3 and admin.closed
    assert not await committed_to(monkeypatch, Offsets([], committed=7), 8, timeout_s=0.05)  # never reached: False


@pytest.mark.asyncio
async def test_an_error_the_broker_will_not_retry_ends_the_wait_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = Offsets([GroupAuthorizationFailedError()], committed=8)
    with pytest.raises(GroupAuthorizationFailedError):
        await committed_to(monkeypatch, admin, 8)
    assert admin.asked == 1 and admin.closed


@pytest.mark.parametrize(
    ("reason", "operator", "refused"),
    [
        (
            "DSR-1\x00",
            "dpo",
            "reason holds a control character",
        ),  # Postgres's text cannot hold a NUL: it failed after the Kafka steps
        ("DSR-1\nforged log line", "dpo", "reason holds a control character"),
        (f"card {generated_card_number()}", "dpo", "reason looks like a card number"),
        ("DSR-1", f"dpo {generated_card_number(15, first='3')}", "operator looks like a card number"),
    ],
    ids=["nul", "line-break", "card-number-in-reason", "card-number-in-operator"],  # no card number in a test's name
)
def test_an_erasure_whose_log_would_keep_a_control_character_or_a_card_number_is_refused_first(
    reason: str, operator: str, refused: str
) -> None:
    """Refused before anything is published: the erasure log keeps its reason and operator for good.
    (Nothing listens at the settings' broker: a check passed would fail on connecting instead.)"""
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9")
    with pytest.raises(ValueError, match=refused):
        asyncio.run(gdpr.erase_account(settings, Codec(), catalogue(), "acct-1", reason, operator, timeout_s=1))
