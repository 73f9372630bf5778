"""The chaos run's judgement: every message accounted for, against the pure engine.

The log is read back from the broker; each account's card events go through ``decide`` in the
order its worker decided them, since the two input topics have no common order. That order is
read from the table's changelog: each stored state adds the event it decided to the account's
recent event ids. Were the changelog compacted, events missing from it would be ordered by where
their first entries sit on the accruals topic. The entries and balances that come out are compared
with Postgres, and so are the lines that explain what moved no money (a purchase that earned
nothing, a refused redemption: the account's history); every message that must be dead-lettered
(undecodable, invalid, a conflicting duplicate) is looked for on the dead-letter topic.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.codec import Codec, DecodeError
from stream.core.balances import BALANCE_FIELDS, balances
from stream.core.entries import RECONCILIATION, Entry, moves_money
from stream.core.events import to_event, validate
from stream.core.offers import OfferBook
from stream.core.profiles import apply_activation, apply_segments, to_account_profile
from stream.core.rules import Outcome, decide
from stream.core.state_rows import Summary, decode_summary, is_summary_key
from stream.settings import Settings
from topics.catalogue import Catalogue, table_changelogs

RESTART_TARGET_S = 15.0


@dataclass
class Report:
    events: int = 0
    poison_total: int = 0
    poison_in_dlq: int = 0
    mismatched_accounts: int = 0
    duplicate_entries: int = 0
    lost_entries: int = 0
    lost_lines: int = 0  # history lines (what moved no money) the pure engine writes and Postgres lacks
    recovery_s: dict[str, float] = field(default_factory=dict)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)  # processes that exited without being told to
    stuck: list[str] = field(default_factory=list)  # waits for the pipeline to drain that timed out

    @property
    def recovery_max_s(self) -> float:
        return max(self.recovery_s.values(), default=0.0)

    def passed(self) -> bool:
        return (
            self.mismatched_accounts == 0
            and self.duplicate_entries == 0
            and self.lost_entries == 0
            and self.lost_lines == 0
            and self.poison_in_dlq == self.poison_total
            and self.recovery_max_s <= RESTART_TARGET_S
            and not self.crashed
            and not self.stuck
        )

    def line(self) -> str:
        return (
            f"chaos {self.events} events: mismatched_accounts={self.mismatched_accounts} "
            f"duplicate_entries={self.duplicate_entries} poison_in_dlq={self.poison_in_dlq}/{self.poison_total} "
            f"lost_entries={self.lost_entries} recovery_s={self.recovery_max_s:.1f}"
            + (f" lost_lines={self.lost_lines}" if self.lost_lines else "")
            + (f" crashed={','.join(self.crashed)}" if self.crashed else "")
            + (f" not_drained={','.join(self.stuck)}" if self.stuck else "")
        )

    def table(self) -> str:
        rows = [f"{'at_s':>7}  what"] + [f"{at:7.1f}  {what}" for at, what in self.timeline]
        rows += [f"recovery of {name}: {seconds:.1f}s" for name, seconds in self.recovery_s.items()]
        return "\n".join(rows + self.notes)


async def partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    tps = sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])
    if not tps:
        raise RuntimeError(f"topic {topic} has no partitions")
    return tps


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=2_000_000)
    await consumer.start()
    try:
        tps = await partitions(bootstrap, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, batch in batches.items():
                records.extend(batch)
                if batch and batch[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()


async def judge(settings: Settings, topics: Catalogue, codec: Codec, book: OfferBook, report: Report) -> None:
    """Fill ``report``'s counts and notes."""
    bootstrap = settings.kafka_bootstrap_servers

    async def read(topic: str) -> list[Any]:
        return await read_topic(bootstrap, topic)

    dead = set()
    for record in await read(topics.dead_letters.name):
        _, letter = codec.decode(record.value, expected_subject="dead_letter")
        dead.add((letter["source_topic"], letter["source_partition"], letter["source_offset"]))
    first_entry: dict[str, tuple[int, int]] = {}
    for record in await read(topics.accruals.name):
        _, accrual = codec.decode(record.value, expected_subject="accrual")
        first_entry.setdefault(accrual["source_event_id"], (record.partition, record.offset))
    # Each account's states as its workers stored them, one per decision, in order on the table's
    # changelog: the event ids each adds to its recent events give the order they were decided in
    # (events that produced no entry included).
    decided_order: dict[str, dict[str, int]] = defaultdict(dict)
    state_changelog, _ = table_changelogs(settings.app_id, topics.authorizations.partitions)
    for record in await read(state_changelog.name):
        if not record.value:
            continue
        key = json.loads(record.key)
        if not is_summary_key(key):
            continue  # a transaction's or a recent event's row (stream.core.state_rows)
        ranks = decided_order[key]
        added = []
        stored = decode_summary(record.value)  # a summary, or a state stored whole by the first layout
        ids = (
            [event_id for event_id, _ in stored.recent] if isinstance(stored, Summary) else list(stored.recent if stored else ())
        )
        for event_id in reversed(ids):  # new ids come last
            if event_id in ranks:
                break
            added.append(event_id)
        for event_id in reversed(added):
            ranks[event_id] = len(ranks)

    profiles: dict[str, Any] = {}
    for topic, subject in ((topics.profiles.name, "account_profile"), (topics.activations.name, "offer_activation")):
        for record in await read(topic):
            if record.value is None:
                continue
            _, value = codec.decode(record.value, expected_subject=subject)
            fold = apply_segments if subject == "account_profile" else apply_activation
            profiles[value["account_id"]] = fold(profiles.get(value["account_id"]), value)

    must_dead_letter: set[tuple[str, int, int]] = set()
    per_account: dict[str, dict[str, list[tuple[Any, tuple[str, int, int]]]]] = defaultdict(lambda: defaultdict(list))
    for topic, subject in ((topics.authorizations.name, "authorization_event"), (topics.settlements.name, "settlement_event")):
        for record in await read(topic):
            where = (topic, record.partition, record.offset)
            try:
                _, value = codec.decode(record.value, expected_subject=subject)
            except DecodeError:
                must_dead_letter.add(where)
                continue
            if validate(value) is not None or record.key != value["account_id"].encode():
                must_dead_letter.add(where)
                continue
            per_account[value["account_id"]][topic].append((to_event(value), where))

    oracle: dict[str, Entry] = {}
    lines: dict[str, Entry] = {}  # the history lines, reconciliation items aside (a table of their own)
    windowed = 0  # accounts with card events the changelog does not order
    for account, by_topic in per_account.items():
        auths, settlements = by_topic[topics.authorizations.name], by_topic[topics.settlements.name]
        state, profile = None, to_account_profile(profiles.get(account))
        ranks = decided_order.get(account, {})
        if len({event.event_id for event, _ in auths + settlements} - set(ranks)):
            windowed += 1
        for event, where in decision_order(auths, settlements, ranks, first_entry):
            decision = decide(event, book, state, profile, horizon_days=settings.transaction_horizon_days)
            state = decision.state
            if decision.outcome is Outcome.DUPLICATE_CONFLICT:
                must_dead_letter.add(where)
            elif decision.outcome is not Outcome.DUPLICATE:
                for entry in decision.entries:
                    if moves_money(entry.entry_kind):
                        oracle.setdefault(entry.accrual_id, entry)
                    elif entry.entry_kind != RECONCILIATION:
                        lines.setdefault(entry.accrual_id, entry)

    connection = await asyncpg.connect(settings.database_url)
    try:
        ledger_ids = {row["accrual_id"] for row in await connection.fetch("SELECT accrual_id FROM ledger_entries")}
        line_ids = {row["accrual_id"] for row in await connection.fetch("SELECT accrual_id FROM purchases_not_earned")}
        rows = await connection.fetch("SELECT * FROM balances")
    finally:
        await connection.close()
    in_postgres: dict[str, dict[Any, Any]] = defaultdict(dict)
    fields = BALANCE_FIELDS
    for row in rows:
        totals = {f: row[f] for f in fields}
        if any(totals.values()):
            in_postgres[row["account_id"]][(row["reward_kind"], row["currency"].strip())] = totals
    expected: dict[str, dict[Any, Any]] = defaultdict(dict)
    for (account, kind, unit), totals in balances(oracle.values()).items():
        if any(totals.values()):
            expected[account][(kind, unit)] = totals
    mismatched = sorted(a for a in set(in_postgres) | set(expected) if in_postgres.get(a) != expected.get(a))
    report.mismatched_accounts = len(mismatched)
    lost, extra = sorted(set(oracle) - ledger_ids), sorted(ledger_ids - set(oracle))
    report.lost_entries = len(lost)
    report.duplicate_entries = len(extra)
    for accrual_id in lost[:5]:
        entry = oracle[accrual_id]
        report.notes.append(f"lost {accrual_id}: {entry.entry_kind} {entry.amount_minor} {entry.currency} of {entry.account_id}")
    if extra:
        report.notes.append(f"in the ledger, not in the oracle: {extra[:5]}")
    lost_lines = sorted(set(lines) - line_ids)
    report.lost_lines = len(lost_lines)
    for accrual_id in lost_lines[:5]:
        line = lines[accrual_id]
        report.notes.append(f"lost line {accrual_id}: {line.entry_kind} ({line.explanation.reason}) of {line.account_id}")
    report.poison_total = len(must_dead_letter)
    report.poison_in_dlq = len(must_dead_letter & dead)
    for account in mismatched[:5]:
        report.notes.append(f"mismatch {account}: postgres {in_postgres.get(account)} oracle {expected.get(account)}")
    if windowed:
        report.notes.append(
            f"{windowed} accounts had card events the changelog does not order; "
            "some of their events were ordered by where their first entries sit"
        )
    missing_dead = sorted(must_dead_letter - dead)[:5]
    if missing_dead:
        report.notes.append(f"not dead-lettered: {missing_dead}")


def decision_order(
    auths: list[tuple[Any, Any]],
    settlements: list[tuple[Any, Any]],
    ranks: dict[str, int],
    first_entry: dict[str, tuple[int, int]],
) -> list[tuple[Any, Any]]:
    """One account's card events in the order its worker decided them: each topic's own order,
    interleaved by the order the account's state recorded its recent event ids in (``ranks``).
    Events older than that window come first; between two of them, the one whose first entry on
    the accruals topic comes first (an event with no entry as early as its topic allows)."""
    order: list[tuple[Any, Any]] = []
    a = s = 0
    while a < len(auths) or s < len(settlements):
        if a == len(auths) or s == len(settlements):
            order.extend(auths[a:] if s == len(settlements) else settlements[s:])
            break
        id_a, id_s = auths[a][0].event_id, settlements[s][0].event_id
        rank_a, rank_s = ranks.get(id_a), ranks.get(id_s)
        if rank_a is not None and rank_s is not None:
            auth_first = rank_a <= rank_s
        elif rank_a is not None or rank_s is not None:
            auth_first = rank_a is None  # outside the window: older
        else:
            at_a, at_s = first_entry.get(id_a), first_entry.get(id_s)
            auth_first = at_a is None or (at_s is not None and at_a <= at_s)
        if auth_first:
            order.append(auths[a])
            a += 1
        else:
            order.append(settlements[s])
            s += 1
    return order
