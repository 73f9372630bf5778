"""GDPR requests for one account: its export (article 15) and its erasure (article 17), for the
command line (``cashback gdpr``) and the operations routes of the API.

**Export.** Everything held about the account, as JSON (``stream.api_models.AccountExport``):
its balances, every history line with its explanation (all of them, not a page), the entries
refused for it, its profile and its activations, and its erasure status. The profile and the
activations are read from their compacted topics (``account-profiles``, ``offer-activations``),
the account's partition to its end: they are the system of record of what the bank told us, in
its own records (each activation with its time, a deactivation too), and what every worker folds.
The worker's profile table is a fold of them, in Faust's internal encoding, rebuilt from them
whenever a worker takes the partition over; reading it would export a copy. The worker's state
(open transactions, caps, remainders) is not exported: it is derived from the card events, and
what it decided is the history. An account of which nothing is held is a ``NothingHeld``; an
erased one an ``AccountErased`` (the API answers 404 to both, saying which).

**Erasure**, in this order, each step waiting for the one before:

1. tombstones for the account's profile and for every activation key it has (``account:offer``)
   on their compacted topics, then an erasure instruction on the co-partitioned
   ``account-erasures`` topic (``schemas/account_erasure.avsc``: the account id and the time,
   nothing else);
2. the worker owning the account's partition folds the instruction
   (``Matcher.erase_account``): it deletes every key of the account's state and its profile from
   its tables (their changelogs get a tombstone per key) and writes the account's erased marker,
   after which it dead-letters the account's later profiles and activations (``account_erased``)
   and lets their tombstones through. The command waits until the matcher's group has committed
   past the instruction: the tables' changelogs then hold the tombstones, and every entry decided
   before it was delivered to the accruals topic;
3. the sink writes those last entries: the command waits until the sink's group has committed the
   accruals partition of the account up to its end as of step 2;
4. ``erase_account`` in Postgres (migration 0008, ``stream.store.erasure``) moves every ledger row
   of the account to a random pseudonym with its amounts kept, logs the erasure (who, when, why,
   the pseudonym; never the account id) and refuses any later row of the account.

A step that does not finish in time (no worker or sink running) stops the command before the
ledger is touched; running it again is safe (tombstones and deletions again, which change
nothing). Card events of the account that arrive after the erasure (which the bank should not send
for an account it closed) are dead-lettered by the worker (``account_erased``), and any entry of
the account that reached the sink anyway (a replay of the accruals topic) is refused by the ledger
and dead-lettered (``ledger_rejected``): neither recreates the account, neither is lost silently.

What the erasure does not reach, by design: the delete-policy topics (card events, accruals, dead
letters, clock) keep their records until their retention ends (Kafka cannot delete one record
there), and compacted topics drop a value only once the log cleaner has compacted its segment.
The README's retention table says how long each topic keeps them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from schemas.codec import Codec, DecodeError
from stream.account_messages import erasure_message, tombstones
from stream.api_models import (
    AccountExport,
    Activation,
    ErasureStatus,
    Explanation,
    ExportedItem,
    ExportedLine,
    ExportedProfile,
    RefusedEntry,
    balance_of,
)
from stream.core.card_numbers import looks_like_card_number
from stream.kafka_clients import stop_consumer
from stream.producing import producer as make_producer
from stream.settings import Settings
from stream.store import erasure as ledger
from topics.catalogue import Catalogue, account_partition

log = logging.getLogger(__name__)

POLL_S = 0.25


class NothingHeld(LookupError):
    """Nothing is held about the account: never seen (or only ever named in card events that
    earned nothing and were never written)."""


class AccountErased(LookupError):
    """The account was erased: nothing personal of it is left to export."""


class ErasureIncomplete(RuntimeError):
    """A step of the erasure did not finish in time; the message says which, and that the ledger
    was not touched."""


@dataclass(frozen=True, slots=True)
class AccountMessages:
    """The account's records on the compacted account topics: the last one per key."""

    profile: dict[str, Any] | None  # its last profile record (None: none, or a tombstone)
    activations: dict[str, dict[str, Any]] = field(default_factory=dict)  # offer id -> its last record


async def read_account_messages(
    settings: Settings, codec: Codec, topics: Catalogue, account_id: str, stall_timeout_s: float = 30.0
) -> AccountMessages:
    """Read the account's partition of the profile and activation topics to its end (one
    consumer, no group) and keep the last record of each of the account's keys."""
    profile_tp = TopicPartition(topics.profiles.name, account_partition(account_id, topics.profiles.partitions))
    activation_tp = TopicPartition(topics.activations.name, account_partition(account_id, topics.activations.partitions))
    latest: dict[tuple[str, bytes], bytes | None] = {}
    wanted = (account_id.encode(), f"{account_id}:".encode())
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **settings.kafka_client_options(),
    )
    try:
        await consumer.start()
        partitions = [profile_tp, activation_tp]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + stall_timeout_s
        while behind := [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            batches = await consumer.getmany(*behind, timeout_ms=1000)
            if any(batches.values()):
                deadline = loop.time() + stall_timeout_s
            elif loop.time() > deadline:
                raise TimeoutError(f"reading {', '.join(tp.topic for tp in behind)} made no progress for {stall_timeout_s:.0f}s")
            for tp, records in batches.items():
                for record in records:
                    key = record.key or b""
                    if key == wanted[0] if tp == profile_tp else key.startswith(wanted[1]):
                        latest[(tp.topic, key)] = record.value
    finally:
        await stop_consumer(consumer)
    profile_value = latest.pop((profile_tp.topic, wanted[0]), None)
    activations = {}
    for (_, key), value in latest.items():
        if value is not None:
            record = _decoded(codec, value, "offer_activation")
            if record is not None:
                activations[key[len(wanted[1]) :].decode(errors="replace")] = record
    return AccountMessages(_decoded(codec, profile_value, "account_profile"), activations)


def _decoded(codec: Codec, value: bytes | None, subject: str) -> dict[str, Any] | None:
    """A record of the topic, or None (a tombstone, or bytes the worker dead-lettered too)."""
    if value is None:
        return None
    try:
        return codec.decode(value, expected_subject=subject)[1]
    except DecodeError:
        return None


# --- export ------------------------------------------------------------------------------------


async def export_account(
    settings: Settings, codec: Codec, topics: Catalogue, db: asyncpg.Pool | asyncpg.Connection, account_id: str
) -> AccountExport:
    """Everything held about the account; ``AccountErased`` or ``NothingHeld`` instead."""
    if await ledger.is_erased(db, account_id):
        raise AccountErased(account_id)
    held = await ledger.holdings(db, account_id)
    messages = await read_account_messages(settings, codec, topics, account_id)
    if held.empty() and messages.profile is None and not messages.activations:
        raise NothingHeld(account_id)
    profile = messages.profile
    return AccountExport(
        account_id=account_id,
        exported_at=datetime.now(UTC),
        erasure=ErasureStatus(erased=False),
        balances=[balance_of(b) for b in held.balances],
        history=[
            ExportedLine(**{k: line[k] for k in ExportedLine.model_fields if k != "explanation"}, explanation=_explained(line))
            for line in held.history
        ],
        profile=ExportedProfile(segments=profile["segments"], updated_at=profile["updated_at"]) if profile else None,
        activations=[
            Activation(account_id=account_id, offer_id=offer_id, active=record["active"], changed_at=record["changed_at"])
            for offer_id, record in sorted(messages.activations.items())
        ],
        refused_entries=[RefusedEntry(**entry) for entry in held.refused_entries],
        reconciliation_items=[ExportedItem(**item) for item in held.items],
        sources={
            "balances, history, refused_entries, reconciliation_items": "the Postgres ledger (balances, ledger_entries, "
            "purchases_not_earned, ledger_conflicts, reconciliation_items)",
            "profile": f"{topics.profiles.name} (compacted), the account's last record",
            "activations": f"{topics.activations.name} (compacted), the last record per offer",
        },
    )


def _explained(line: dict[str, Any]) -> Explanation:
    explanation = line["explanation"]
    return Explanation(**{k: explanation.get(k) for k in Explanation.model_fields})


# --- erasure -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErasureReport:
    erasure: ledger.Erasure  # the erasure log's row
    tombstones: int  # published to the profile and activation topics


async def erase_account(
    settings: Settings,
    codec: Codec,
    topics: Catalogue,
    account_id: str,
    reason: str,
    operator: str,
    timeout_s: float = 120.0,
    say: Callable[[str], None] = lambda _: None,
    db: asyncpg.Pool | asyncpg.Connection | None = None,
) -> ErasureReport:
    """Erase the account (the module doc's four steps); ``say`` hears each step's progress.
    ``ErasureIncomplete`` when the worker or the sink did not follow within ``timeout_s`` each."""
    if not reason.strip() or not operator.strip():
        raise ValueError("an erasure needs a reason (the request's reference) and an operator")
    for name, text in (("reason", reason), ("operator", operator)):  # kept in the erasure log for good
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
            raise ValueError(f"the erasure's {name} holds a control character")
        if looks_like_card_number(text):
            raise ValueError(f"the erasure's {name} looks like a card number: no card number is kept")
    messages = await read_account_messages(settings, codec, topics, account_id)
    dead = tombstones(account_id, messages.activations, topics.profiles, topics.activations)
    partition, key, value = erasure_message(codec, account_id, datetime.now(UTC), topics.erasures.partitions)
    client = make_producer(settings)
    try:
        await client.start()
        deliveries = [await client.send(topic, None, key=k, partition=p) for topic, k, _, p in dead]
        await asyncio.gather(*deliveries)  # the tombstones first: a refused one stops the erasure here
        sent = await client.send_and_wait(topics.erasures.name, value, key=key, partition=partition)
    finally:
        await client.stop()
    say(f"published {len(dead)} tombstones and the erasure instruction ({topics.erasures.name}[{partition}]@{sent.offset})")

    instruction = TopicPartition(topics.erasures.name, partition)
    if not await _committed_to(settings, settings.app_id, instruction, sent.offset + 1, timeout_s):
        raise ErasureIncomplete(
            f"the worker did not apply the erasure within {timeout_s:.0f}s (is a worker of group {settings.app_id} running?); "
            "the tombstones and the instruction are published, the ledger is untouched: run the command again"
        )
    say("the worker deleted the account's state and profile")
    accruals = TopicPartition(topics.accruals.name, account_partition(account_id, topics.accruals.partitions))
    end = await _end_offset(settings, accruals)
    if not await _committed_to(settings, settings.sink_group_id, accruals, end, timeout_s):
        raise ErasureIncomplete(
            f"the sink did not write the account's last entries within {timeout_s:.0f}s (is a sink of group "
            f"{settings.sink_group_id} running?); the worker has erased the account, the ledger is untouched: "
            "run the command again"
        )
    say("the sink has written every entry of the account")
    try:
        if db is None:
            connection = await asyncpg.connect(settings.database_url, timeout=30)
            try:
                logged = await ledger.erase(connection, account_id, reason, operator)
            finally:
                await connection.close()
        else:
            logged = await ledger.erase(db, account_id, reason, operator)
    except asyncpg.exceptions.LockNotAvailableError:
        raise ErasureIncomplete(
            "the ledger's writers kept its tables busy for 10s; the worker has erased the account, the ledger is "
            "untouched: run the command again"
        ) from None
    except asyncpg.exceptions.InvalidParameterValueError as refused:
        raise ValueError(refused.args[0] if refused.args else "the ledger refused the erasure") from None
    return ErasureReport(logged, len(dead))


async def _end_offset(settings: Settings, tp: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, **settings.kafka_client_options())
    try:
        await consumer.start()
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await stop_consumer(consumer)


async def _committed_to(settings: Settings, group: str, tp: TopicPartition, offset: int, timeout_s: float) -> bool:
    """Wait until ``group`` has committed ``tp`` up to ``offset`` (True), or ``timeout_s`` passed.
    An error the broker says is retriable is asked again until then: the group's coordinator not
    known yet (a cluster whose offsets topic is still being made, a coordinator moving after a
    broker's failure) is a wait, not the erasure's failure."""
    if offset <= 0:
        return True
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, **settings.kafka_client_options())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        await admin.start()
        while True:
            try:
                committed = (await admin.list_consumer_group_offsets(group, partitions=[tp])).get(tp)
            except KafkaError as error:
                if not error.retriable:
                    raise
                log.info("the offsets of group %s are not readable yet (%s): asking again", group, type(error).__name__)
            else:
                if committed is not None and committed.offset >= offset:
                    return True
            if loop.time() > deadline:
                return False
            await asyncio.sleep(POLL_S)
    finally:
        await admin.close()
