"""GDPR erasure in the matcher (``Matcher.erase_account``, ``stream.gdpr``): an erasure instruction
deletes every key of the account's state and its profile, so each one's last record on the tables'
changelogs is a tombstone; the account is marked erased, its later profiles and activations are
dead-lettered (their tombstones let through), and another account is left as it was. No broker
(see conftest.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from stream.account_profiles import erased_key
from stream.account_states import AccountStates
from stream.changelog_table import DELETED
from stream.core.rules import Outcome
from stream.core.state_rows import Summary, encode, is_summary_key
from stream.matcher import Matcher, Source
from stream.settings import Settings
from tests.agent.conftest import ACCOUNT, AgentHarness, encode_auth, encode_settlement
from tests.factories import card_record
from topics.catalogue import account_partition

pytestmark = pytest.mark.asyncio

OTHER = "acct-2"
AT = datetime(2026, 1, 1, tzinfo=UTC)


def home(harness: AgentHarness, account: str) -> int:
    return account_partition(account, harness.matcher.topics.authorizations.partitions)


async def purchase(harness: AgentHarness, account: str, ref: str, amount_minor: int = 10_000) -> None:
    auth = card_record(amount_minor=amount_minor, account_id=account, transaction_ref=ref)
    assert (await harness.put(encode_auth(harness.codec, auth), account.encode(), partition=home(harness, account))).outcome
    clearing = card_record("CLEARING", amount_minor, account_id=account, transaction_ref=ref)
    settlements = harness.settlement_topic
    await harness.put(
        encode_settlement(harness.codec, clearing), account.encode(), topic=settlements, partition=home(harness, account)
    )


async def profile(harness: AgentHarness, account: str, segments: list[str]) -> None:
    value = harness.codec.encode("account_profile", {"account_id": account, "segments": segments, "updated_at": AT})
    await harness.put(value, account.encode(), topic=harness.matcher.topics.profiles.name, partition=home(harness, account))


async def activation(harness: AgentHarness, account: str, offer_id: str, value: bytes | None = None, **record: Any) -> None:
    if value is None and not record.get("tombstone"):
        value = harness.codec.encode(
            "offer_activation", {"account_id": account, "offer_id": offer_id, "active": True, "changed_at": AT}
        )
    key = f"{account}:{offer_id}".encode()
    await harness.put(value, key, topic=harness.matcher.topics.activations.name, partition=home(harness, account))


async def erase(harness: AgentHarness, account: str, partition: int | None = None, key: str | None = None) -> None:
    value = harness.codec.encode("account_erasure", {"account_id": account, "requested_at": AT})
    topic = harness.matcher.topics.erasures.name
    await harness.put(
        value, (key or account).encode(), topic=topic, partition=home(harness, account) if partition is None else partition
    )


def last_writes(harness: AgentHarness, table: Any) -> dict[str, Any]:
    """Each key's last record on the table's changelog (None: a tombstone)."""
    written: dict[str, Any] = {}
    for sent in harness.sends.to(table.changelog_topic.get_topic_name()).sent:
        written[json.loads(sent.key)] = sent.value
    return written


def keys_of(account: str, keys: Any) -> set[str]:
    return {key for key in keys if key == account or key.startswith(account + "\x1f")}


async def test_an_erasure_tombstones_every_key_of_the_account_and_leaves_the_others(harness: AgentHarness) -> None:
    matcher = harness.matcher
    await profile(harness, ACCOUNT, ["vip"])
    await activation(harness, ACCOUNT, "grocery-5")
    await profile(harness, OTHER, ["new"])
    for n in range(3):
        await purchase(harness, ACCOUNT, f"txn-{n}")
    await purchase(harness, OTHER, "txn-other")
    states_before = last_writes(harness, matcher.states)
    written = keys_of(ACCOUNT, states_before)
    # a summary, 3 purchases, and the rows of its recent events (6 events: slots freed as their entries are delivered are taken again)
    assert {ACCOUNT, f"{ACCOUNT}\x1ft\x1ftxn-2", f"{ACCOUNT}\x1fr\x1f0"} <= written and len(written) >= 5
    other_state = harness.state(OTHER)

    await erase(harness, ACCOUNT)

    states = last_writes(harness, matcher.states)
    assert {key: states[key] for key in written} == dict.fromkeys(written)  # a tombstone for each
    assert keys_of(ACCOUNT, states) == written  # and nothing new of the account
    assert all(states[key] is not None for key in keys_of(OTHER, states))
    profiles = last_writes(harness, matcher.profiles)
    assert profiles[ACCOUNT] is None
    assert json.loads(profiles[erased_key(ACCOUNT)]) == {"erased": True}
    assert profiles[OTHER] is not None
    assert ACCOUNT not in erased_key(ACCOUNT)  # the marker does not name the account
    # Read back, the account is gone and nothing of it falls due; the other one is untouched.
    assert harness.state(ACCOUNT) is None
    assert ACCOUNT not in matcher.accounts.due(home(harness, ACCOUNT), 2**62)
    assert harness.state(OTHER) == other_state
    assert matcher.account_profiles.erased(ACCOUNT) and not matcher.account_profiles.erased(OTHER)
    assert matcher.account_profiles.get(ACCOUNT).segments == frozenset()
    assert matcher.account_profiles.get(OTHER).segments == frozenset({"new"})
    assert harness.dead_letters.sent == []


async def test_after_an_erasure_the_accounts_messages_are_refused_and_its_tombstones_let_through(harness: AgentHarness) -> None:
    matcher = harness.matcher
    await purchase(harness, ACCOUNT, "txn-1")
    await erase(harness, ACCOUNT)
    profile_writes = len(harness.sends.to(matcher.profiles.changelog_topic.get_topic_name()).sent)

    await activation(harness, ACCOUNT, "grocery-5", tombstone=True)  # the erasure command's own
    await harness.put(None, ACCOUNT.encode(), topic=matcher.topics.profiles.name, partition=home(harness, ACCOUNT))
    assert harness.dead_letters.sent == []
    await profile(harness, ACCOUNT, ["vip"])  # published after the erasure
    await activation(harness, ACCOUNT, "grocery-5")
    assert [letter["reason"] for _, letter in harness.dead_letters_decoded()] == ["account_erased", "account_erased"]
    assert len(harness.sends.to(matcher.profiles.changelog_topic.get_topic_name()).sent) == profile_writes
    assert matcher.account_profiles.get(ACCOUNT).segments == frozenset()

    await erase(harness, ACCOUNT)  # again: nothing to delete, nothing refused
    assert len(harness.dead_letters.sent) == 2
    assert harness.state(ACCOUNT) is None


async def test_an_erasure_in_the_batch_of_the_accounts_last_events_still_ends_in_tombstones(harness: AgentHarness) -> None:
    """The batch's pending state of the account is dropped: the deletions are its last word; the
    entries decided before the erasure still leave (the ledger's erasure follows them)."""
    matcher = harness.matcher
    auth = card_record(amount_minor=10_000, transaction_ref="txn-late")
    value = harness.codec.encode("account_erasure", {"account_id": ACCOUNT, "requested_at": AT})
    await harness.put_nowait(encode_auth(harness.codec, auth), ACCOUNT.encode(), partition=home(harness, ACCOUNT))
    await harness.put_nowait(value, ACCOUNT.encode(), topic=matcher.topics.erasures.name, partition=home(harness, ACCOUNT))
    await harness.wait_handled(2)

    states = last_writes(harness, matcher.states)
    assert keys_of(ACCOUNT, states) and all(states[key] is None for key in keys_of(ACCOUNT, states))
    assert [accrual["entry_kind"] for _, accrual in harness.accruals_decoded()] == ["PENDING_CREATED"]
    assert harness.state(ACCOUNT) is None


async def test_a_card_event_of_an_erased_account_is_dead_lettered_not_decided(harness: AgentHarness) -> None:
    """``refuse_erased``: what the card-event path asks once an event is valid."""
    matcher = harness.matcher
    await erase(harness, ACCOUNT)
    source = Source(harness.auth_topic, home(harness, ACCOUNT), 7, ACCOUNT.encode(), b"original")
    assert await matcher.refuse_erased(ACCOUNT, source)
    assert not await matcher.refuse_erased(OTHER, source)
    ((_, letter),) = harness.dead_letters_decoded()
    assert (letter["reason"], letter["source_offset"], letter["value"]) == ("account_erased", 7, b"original")


@pytest.mark.parametrize("case", ["wrong_partition", "key_mismatch", "undecodable"])
async def test_a_bad_erasure_instruction_is_dead_lettered_and_erases_nothing(harness: AgentHarness, case: str) -> None:
    matcher = harness.matcher
    await purchase(harness, ACCOUNT, "txn-1")
    topic, partition = matcher.topics.erasures.name, home(harness, ACCOUNT)
    if case == "wrong_partition":
        await erase(harness, ACCOUNT, partition=(partition + 1) % matcher.topics.erasures.partitions)
    elif case == "key_mismatch":
        await erase(harness, ACCOUNT, key=OTHER)
    else:
        await harness.put(b"\x00\x00\x00\x00\x0cnot avro", ACCOUNT.encode(), topic=topic, partition=partition)
    ((_, letter),) = harness.dead_letters_decoded()
    assert letter["reason"] == {"wrong_partition": "wrong_partition", "key_mismatch": "key_mismatch"}.get(case, "undecodable")
    assert harness.state(ACCOUNT) is not None and not matcher.account_profiles.erased(ACCOUNT)
    assert (await harness.put(encode_auth(harness.codec, card_record(transaction_ref="txn-2")), partition=partition)).outcome is (
        Outcome.EARNED
    )


class StoreTable:
    """The parts of ``ChangelogTable`` the account states use, over a real RocksDB store."""

    def __init__(self, store: Any) -> None:
        self.data = store
        self.unsettled: dict[str, Any] = {}
        self.staged: list[tuple[str, Any, int]] = []

    def stage(self, key: str, value: Any, partition: int) -> None:
        self.staged.append((key, value, partition))

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def get_many(self, keys: list[str], partition: int) -> list[Any]:
        return [self.data.get(key) for key in keys]

    def keys(self) -> Any:
        raise AssertionError("a RocksDB store is read by prefix, never whole")


async def test_on_rocksdb_only_the_accounts_keys_of_its_partition_are_read(settings: Settings, codec: Any) -> None:
    """Every row of the account, named by its summary or not (a row a cut step left behind), and
    no key of another account whose id starts the same."""
    store = Matcher(settings, codec).states._new_store_by_url("rocksdb://")
    keys = [
        ACCOUNT,
        f"{ACCOUNT}\x1ft\x1ftxn-1",
        f"{ACCOUNT}\x1fr\x1f0",
        f"{ACCOUNT}\x1ft\x1forphan",
        "acct-10",
        "acct-10\x1ft\x1fx",
    ]
    summary = encode(Summary(layout=3, refs=["txn-1"], recent=[("evt-1", 0)]))
    for key in [*keys, "acct-1 ", "acct-0\x1ft\x1fy"]:
        store._db_for_partition(1).put(store._encode_key(key), summary)
    table = StoreTable(store)
    states = AccountStates(table, partitions=4)  # type: ignore[arg-type]
    table.unsettled[f"{ACCOUNT}\x1ft\x1fnot-yet-settled"] = (1, summary)

    assert set(states._stored_keys(ACCOUNT + "\x1f", 1)) == set(keys[1:4])
    deleted = states.erase(ACCOUNT, 1)
    assert deleted[0] == ACCOUNT and set(deleted) == {*keys[:4], f"{ACCOUNT}\x1ft\x1fnot-yet-settled"}
    assert all(value is DELETED and partition == 1 for _, value, partition in table.staged)
    assert not any(is_summary_key(key) and key != ACCOUNT for key in deleted)


async def test_on_rocksdb_the_due_accounts_of_a_partition_are_read_from_its_own_store(settings: Settings, codec: Any) -> None:
    """The first tick of a partition finds its due accounts among that partition's keys only: the
    table's whole key view (every partition, read twice) is never asked (``StoreTable.keys``)."""
    store = Matcher(settings, codec).states._new_store_by_url("rocksdb://")
    partitions = 4
    mine = [a for a in (f"acct-{n}" for n in range(40)) if account_partition(a, partitions) == 1][:3]
    other = next(a for a in (f"acct-{n}" for n in range(40)) if account_partition(a, partitions) == 2)
    for due_ms, account in zip((300, 100, None), mine, strict=True):
        store._db_for_partition(1).put(store._encode_key(account), encode(Summary(layout=3, due_ms=due_ms)))
        store._db_for_partition(1).put(store._encode_key(f"{account}\x1ft\x1ftxn-1"), encode(Summary(layout=3)))
    store._db_for_partition(2).put(store._encode_key(other), encode(Summary(layout=3, due_ms=50)))
    table = Matcher(settings, codec).states
    table._data = store
    table.keys = StoreTable.keys.__get__(table)  # type: ignore[method-assign]
    states = AccountStates(table, partitions=partitions)

    assert states.due(1, 1_000) == [mine[1], mine[0]]  # the earliest first; the one with nothing due left out
    assert states.due(1, 200) == [mine[1]]
    assert states.due(2, 1_000) == [other]
