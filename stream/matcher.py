"""The matcher: a Faust agent over both card-event topics. It only decodes, calls the pure rules
engine, emits and counts.

The agent takes the message Faust's stream hands it, then, in the same turn, those waiting in its
queue behind it (``stream.agent_queue``: a flush's waits let a fetch's messages gather there). Per
event, in this order:

1. decode and validate; a bad message goes to the dead-letter topic (with its bytes, topic,
   partition, offset and reason) and processing moves on, as does an event dated further ahead of
   the worker's clock than ``EVENT_AHEAD_LIMIT_DAYS`` (its time would become its account's clock),
   and one its account's state cannot take within Kafka's record limit (``AccountStates.refusal``);
   one read off its account's partition is sent there to be decided (``stream.misrouted``);
2. ``decide(event, offers, state)`` for the event's account (its profile joined from
   ``stream.account_profiles``, its campaign budgets granted through ``stream.granting``);
3. write what the event changed of the account's state (its summary, its transaction and its
   recent-event slot: ``stream.account_states``), and stage its entries;
4. once the stream holds no more messages and the batch is ``BATCH_LINGER_S`` old (or the batch
   is full), flush the batch (``stream.outbox``): hand the batch's states to the table (one summary per account), wait
   once until the table's changelog topic has them all, then send the entries to the accruals
   topic (keyed by account, so co-partitioned with the input) and account for the batch's
   messages. Every record goes straight to the producer's Kafka client (``stream.producing``).
   Then the customer notifications those entries make (``stream.core.notices``), on the
   notifications topic, keyed by account, their deliveries counted before the commit like the
   entries'.

Delivery is at-least-once: Faust flushes the producer (entries, dead letters and the table's
changelog) before it commits the input offsets, so a crash redelivers, never loses. Which offsets
are committed is the matcher's decision, not Faust's acks: a message is processed only when it is
the next offset of its partition, holes are read again, and an offset is committed only once its
sends were delivered (``stream.input_partitions``). Effects are
exactly-once: the state keeps every event id with its transaction, so a redelivered event is never
applied twice, and the ledger ignores entry ids it already holds. The state is on the changelog
before its entries are sent (so no entry outlives a crash its state did not), and a crash can leave
decisions whose entries never left: at most ``IN_FLIGHT_LIMIT`` of them per account, each among
the recent events its account keeps with their entries, which a redelivery re-emits (same ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from faust.types import Message, StreamT

from schemas.codec import Codec, DecodeError
from stream.account_profiles import ACCOUNT_ERASED, ERASURE_SUBJECT, AccountProfiles, Refusal
from stream.account_states import AccountStates
from stream.agent_queue import Source, take_queued
from stream.changelog_table import ChangelogTable
from stream.core.abuse import AbuseRules
from stream.core.events import CardEvent, EventType, ahead_of_clock, to_event, validate
from stream.core.memory import RECENT_EVENTS_LIMIT
from stream.core.rules import Decision, Outcome, decide
from stream.core.state import AccountState
from stream.deadletter import OtherReason, Stage, dead_letter
from stream.granting import BatchGrants, PostgresBudgets
from stream.group_membership import GroupWatch
from stream.guarded_consumer import OffsetLookups, keep_across_resumes
from stream.heap import TRIM_INTERVAL_S, trimmer
from stream.input_partitions import InputPartitions, PartitionRevoked
from stream.metrics import EVENTS_CONSUMED, count_payout_decision
from stream.misrouted import forward
from stream.offer_mirror import OfferMirror
from stream.outbox import BatchDropped, Decided, Outbox, Staged
from stream.producing import AppSends
from stream.settings import Settings
from stream.stopping import cancel_is_failure
from stream.store.budgets import BudgetStore, movement_id
from stream.time_passing import TimePassing
from stream.worker_app import INPUT_SCHEMA, PROFILE_SCHEMA, STATE_SCHEMA, STORE_OPTIONS, share_store_memory, worker_app
from topics.catalogue import ACCOUNT_PROFILE_TABLE, ACCOUNT_STATE_TABLE, MAX_COMPACTION_LAG_MS, Catalogue, account_partition

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 5.0
# Decisions whose entries may be undelivered when an account's state is stored: at most the events it
# keeps with their entries, so a crash never loses one (stream.progress.InFlightDecisions).
IN_FLIGHT_LIMIT = RECENT_EVENTS_LIMIT
# The most messages a batch holds before it is flushed (it is flushed sooner when the stream holds
# nothing more): bounds the memory and the time a batch's entries wait.
BATCH_LIMIT = 2000
# How long a batch waits for more messages when the stream holds none: what an event's entries may
# wait for others to share its changelog round trip (stream.outbox.Outbox.linger).
BATCH_LINGER_S = 0.02


_PAYOUT_EVENTS = frozenset({EventType.PAYOUT_RUN, EventType.PAYOUT_RESULT})
_ABOUT_AN_ACCOUNT = frozenset({*_PAYOUT_EVENTS, EventType.OPEN_WALLET})  # never the first event of an account


class Matcher:
    """The Faust app with its agent, table and offer mirror."""

    def __init__(
        self, settings: Settings, codec: Codec, topics: Catalogue | None = None, abuse: AbuseRules | None = None
    ) -> None:
        """``abuse``: the abuse rules the decisions apply (None: ``stream.core.abuse``'s configured ones)."""
        self.settings = settings
        self.abuse = abuse
        self.codec = codec
        self.event_ahead_limit_ms = settings.event_ahead_limit_ms()  # EVENT_AHEAD_LIMIT_DAYS (None: off)
        self.topics = topics or settings.topics()
        Path(settings.worker_data_dir).mkdir(parents=True, exist_ok=True)
        self.input_subjects = {t.name: t.value_subject for t in self.topics.inputs()}
        self.account_subjects = {t.name: t.value_subject for t in self.topics.account_inputs()}
        ordered = self.topics.input_order()  # every topic the agent reads, each with its place at a tie
        input_topics = tuple(ordered)
        self.app = worker_app(settings, frozenset(input_topics), self.topics.authorizations.partitions, ordered)
        broker_view = OffsetLookups(settings.app_id, settings.kafka_bootstrap_servers, **settings.kafka_client_options())
        self.input = self.app.topic(*input_topics, schema=INPUT_SCHEMA, acks=True)
        self.clock = self.app.topic(self.topics.clock.name, key_serializer="raw", value_serializer="raw")
        # Entries, dead letters and the tables' changes go straight to the producer (stream.producing).
        self.sends = AppSends(self.app)
        # Held while the tables' changes are handed to the producer; a revocation waits for it.
        self.handing_over = asyncio.Lock()
        self.states = ChangelogTable(
            self.app,
            name=ACCOUNT_STATE_TABLE,
            default=None,
            schema=STATE_SCHEMA,
            value_type=bytes,
            options=dict(STORE_OPTIONS),  # a copy: Faust's store takes keys out of it
            extra_topic_configs={"max.compaction.lag.ms": str(MAX_COMPACTION_LAG_MS)},
            beacon=self.app.tables.beacon,
        )
        self.app.tables.add(self.states)
        # The states as the engine takes them: a summary and rows per account in that table.
        self.accounts = AccountStates(self.states, self.topics.authorizations.partitions, settings.worker_state_cache_mb * 2**20)
        card_partitions = self.topics.authorizations.name
        self.inputs = InputPartitions(
            self.app,
            broker_view,
            settings.app_id,
            self.input_subjects,
            lambda lost: self._lost(tp.partition for tp in lost if tp.topic == card_partitions),
            self.handing_over,
        )
        # Segments and activations per account (stream.core.profiles), joined from their own topics.
        self.profiles = ChangelogTable(
            self.app,
            name=ACCOUNT_PROFILE_TABLE,
            default=None,
            schema=PROFILE_SCHEMA,
            options=dict(STORE_OPTIONS),
            extra_topic_configs={"max.compaction.lag.ms": str(MAX_COMPACTION_LAG_MS)},
            beacon=self.app.tables.beacon,
        )
        self.app.tables.add(self.profiles)
        for table in (self.states, self.profiles):
            table.sends, table.handing_over = self.sends, self.handing_over
            table.configure_store = share_store_memory  # one memory budget for every local store
        self.account_profiles = AccountProfiles(self.profiles, codec, self.account_subjects, self.accounts.partitions)
        self.offers = OfferMirror(
            self.topics.offers.name, codec, settings.kafka_bootstrap_servers, **settings.kafka_client_options()
        )
        # Campaign budgets, granted a batch at a time before its states leave (stream.granting).
        self.grants = BatchGrants(PostgresBudgets(BudgetStore(settings.database_url)), settings.budget_read_max_age_s)
        self.agent = self.app.agent(self.input, name="matcher")(cancel_is_failure(self._consume))  # stream.stopping
        self.app.task(self._run_offer_mirror)
        # A consumer out of its group owns nothing and reports no lag: watched apart (stream.group_membership).
        self.membership = GroupWatch(self.app, settings.worker_out_of_group_limit_s)
        self.app.timer(LAG_INTERVAL_S)(self._observe_lag)
        # The heap pages the churn of the bounded caches freed, back to the system (stream.heap).
        self._trim_heap = trimmer()
        if self._trim_heap is not None:
            self.app.timer(TRIM_INTERVAL_S)(self._trim)
        # The messages processed since the last flush, and the entries they wait to send.
        self.outbox = Outbox(
            (self.states, self.profiles),
            self.sends,
            self.topics.accruals.name,
            codec,
            self.inputs,
            self.accounts,
            IN_FLIGHT_LIMIT,
            dropped=self.account_profiles.forget,
            notifications=self.topics.notifications.name,
            language=settings.notification_default_language,
            languages=self.account_profiles.language,
            payouts=self.topics.payouts.name,
            grants=self.grants,
        )
        self.current: Staged | None = None  # the message being processed
        # Time passing: the clock's ticks, what falls due on them, scheduled payout runs (stream.time_passing).
        self.time = TimePassing(self)
        self.app.timer(settings.clock_interval_s)(self.time.send_ticks)

    def _lost(self, partitions: Iterable[int]) -> None:
        """Partitions whose accounts may change elsewhere from now on: forget what was read of them."""
        self.accounts.forget(partitions)
        self.account_profiles.forget()

    async def _run_offer_mirror(self) -> None:
        await self.offers.run()

    async def _consume(self, stream: StreamT) -> None:
        buffered = cast(Any, stream.channel).queue  # what the stream holds, read but not yet processed
        keep_across_resumes(self.app, buffered)  # Faust would empty it as each recovery ends (stream.guarded_consumer)
        self.inputs.agent_queue = buffered  # the partition watch looks there for a partition's next message
        await self.offers.ready.wait()  # never match a purchase before every offer is known
        async for event in stream.events():
            await self._take(event.message)
            # Then what the queue holds already, taken in the same turn (stream.agent_queue).
            while len(self.outbox.batch) < BATCH_LIMIT and (queued := take_queued(self.app, buffered)) is not None:
                try:
                    await self._take(queued.message)
                finally:
                    queued.ack()  # as the stream acks its event, whatever became of it
            # One flush for what the stream brought within the batch's linger (or a full batch).
            if self.outbox.batch and buffered.empty():
                await self.outbox.linger(buffered, BATCH_LINGER_S)
            if self.outbox.batch and (buffered.empty() or len(self.outbox.batch) >= BATCH_LIMIT):
                with contextlib.suppress(BatchDropped):  # its messages are read again
                    await self.outbox.flush()

    async def _take(self, message: Message) -> None:
        """Process one message of the agent's queue when it is its partition's next (steps 1-3 of the
        module doc), staged in the batch."""
        if not await self.inputs.is_next(message.tp, message.offset):
            return
        self.current = staged = self.outbox.start(message.tp, message.offset, message.timestamp)
        self.inputs.current_tp = message.tp
        self.inputs.done(message.tp, message.offset, staged.deliveries)  # committable once flushed and delivered
        try:
            await self.handle(message.topic, message.partition, message.offset, message.key, message.value)
        except PartitionRevoked as revoked:
            log.info("%s[%d] revoked while offset %d waited: left to its next owner", *message.tp, message.offset)
            self.outbox.batch.drop(staged, revoked)
        except BatchDropped as dropped:  # read again with the rest of its batch
            self.outbox.batch.drop(staged, dropped)
        except BaseException as error:  # the agent fails: the message is read again
            self.outbox.batch.drop(staged, error)
            raise
        finally:
            staged.complete = True
            self.current = None

    async def handle(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> Outcome | None:
        """Process one input message (steps 1-3 of the module doc). Returns the outcome, or None
        when the message was dead-lettered (or was an account message, not a card event)."""
        source = Source(topic, partition, offset, key, value)
        if topic in self.account_subjects:
            await self.handle_account_message(source)
            return None
        if topic == self.topics.clock.name:
            await self.time.handle_tick(source)
            return None
        subject = self.input_subjects[topic]  # only the input topics reach here
        try:
            _, record = self.codec.decode(value, expected_subject=subject)
        except DecodeError as error:
            await self.send_dead_letter(error.failure.value, error.detail, source)
            return None
        rejection = validate(record)
        if rejection is not None:
            await self.send_dead_letter(rejection.reason.value, rejection.detail(), source)
            return None
        if key != record["account_id"].encode():
            await self.send_dead_letter(OtherReason.KEY_MISMATCH.value, "message key is not the event's account_id", source)
            return None
        if partition != (home := account_partition(record["account_id"], self.topics.authorizations.partitions)):
            self.keep_delivery(await forward(self.sends, topic, partition, key, value, home, self.current))  # stream.misrouted
            return None
        if await self.refuse_erased(record["account_id"], source):
            return None
        event = to_event(record)
        if (ahead := ahead_of_clock(event, int(time.time() * 1000), self.event_ahead_limit_ms)) is not None:
            await self.send_dead_letter(ahead.reason.value, ahead.detail(), source)  # it would move the account's clock
            return None
        state = self.accounts.get(record["account_id"])
        if state is None and event.event_type in _ABOUT_AN_ACCOUNT:  # would make a state for an account never seen
            await self.send_dead_letter(OtherReason.UNKNOWN_ACCOUNT.value, "the worker holds no state for the account", source)
            return None
        if (full := self.accounts.refusal(event.account_id, event, state)) is not None:  # its state would outgrow Kafka's record
            await self.send_dead_letter(OtherReason.ACCOUNT_STATE_FULL.value, full, source)
            return None
        return await self.apply(event, state, source)

    async def apply(
        self, event: CardEvent, state: AccountState | None, source: Source | None, ticked: int | None = None
    ) -> Outcome | None:
        """Decide one event for its account and write the new state; its entries are sent at the
        next flush, once the changelog has the state. ``source`` is the input message, None for an
        internal event of time passing; ``ticked``: then, the clock offset of the tick that made it,
        kept in the new state (``stream.time_passing``)."""
        await self.outbox.room_for(event.account_id)
        self.inputs.still_owned()
        try:
            decision = await self._decide(event, state)
        except BatchDropped:
            raise
        except Exception as error:  # a bug in the rules: keep the message, keep going
            log.exception("rules failed on event %s", event.event_id)
            if source is None:
                raise
            await self.send_dead_letter(OtherReason.PROCESSING_ERROR.value, type(error).__name__, source)
            return None
        self.inputs.still_owned()  # a budget grant may have waited for Postgres; nothing waits from here to the state write
        if decision.outcome is Outcome.DUPLICATE_CONFLICT and source is not None:
            log.error("event id %s seen before with other content: quarantined", event.event_id)
            await self.send_dead_letter(OtherReason.DUPLICATE_CONFLICT.value, "event_id seen before with other content", source)
        stored = decision.state is not state
        if stored and ticked is not None:
            decision.state.ticked = ticked
        if stored:
            # The state first, on the changelog, and only then its entries (at the flush): a crash
            # before the changelog has it lets no entry out (the event is decided again, maybe in
            # another order of the two input topics, on the changelog's state); a crash after it
            # finds the event decided and sends the same entries again (the recent events keep them).
            self.accounts.write(event.account_id, state, decision.state, self.inputs.current_tp.partition)
        # A decision holding a place among the account's recent events counts in its room, entries or not: a new one,
        # or one read again after a restart (stream.outbox). A redelivered confirmation may only notify again.
        placed = stored or (decision.outcome is Outcome.DUPLICATE and state is not None and event.event_id in state.recent)
        if (decision.entries or decision.notices or placed) and self.current is not None:
            counted = decision.outcome is not Outcome.DUPLICATE
            # The account's language for its notifications (its profile is read once per account and cached).
            language = self.account_profiles.language(event.account_id) if decision.entries or decision.notices else None
            decided = Decided(event.account_id, decision.entries, placed, counted, decision.notices, language, event.event_id)
            self.outbox.batch.decided(self.current, decided)
        if self.current is not None:  # counted once its batch is flushed (a dropped batch is decided again)
            self.current.outcomes.append((event.event_type.value, decision.outcome.value))
        if event.event_type in _PAYOUT_EVENTS:
            count_payout_decision(decision.outcome, event.billing_currency)
        return decision.outcome

    async def _decide(self, event: CardEvent, state: AccountState | None) -> Decision:
        """The engine's decision, with its campaign budgets granted across all workers
        (stream.granting). The grant is in Postgres before anything of its batch is sent."""
        book = self.offers.book
        profile = self.account_profiles.get(event.account_id)
        horizon = self.settings.transaction_horizon_days

        def decide_with(remaining: Mapping[str, int] | None) -> Decision:
            return decide(event, book, state, profile, budget_remaining=remaining, horizon_days=horizon, abuse=self.abuse)

        movement = movement_id(event.account_id, event.event_id)
        return await self.grants.decide(decide_with, book, movement, self.outbox.settle_grants)

    async def handle_account_message(self, source: Source) -> None:
        """An activation or a profile: fold it into the account's profile (stream.account_profiles).
        An erasure instruction: erase the account (``erase_account``)."""
        subject = self.account_subjects[source.topic]
        if subject == ERASURE_SUBJECT:
            erased = self.account_profiles.erasure_of(source.partition, source.key, source.value)
            if isinstance(erased, Refusal):
                await self.send_dead_letter(erased.reason, erased.detail, source)
                return
            self.erase_account(erased, source.partition)
        else:
            refusal = self.account_profiles.fold(source.topic, source.partition, source.key, source.value)
            if refusal is not None:
                await self.send_dead_letter(refusal.reason, refusal.detail, source)
                return
        EVENTS_CONSUMED.labels(subject.upper(), "applied").inc()

    def erase_account(self, account_id: str, partition: int) -> None:
        """GDPR erasure (stream.gdpr): delete every key of the account's state and its profile, and
        mark it erased, on its partition. The deletions are staged now, after anything the batch
        decided for it (whose entries still leave at the flush: they were decided before the
        erasure), and reach the changelogs as tombstones at the flush; the instruction's offset is
        committed only after that. Nothing here logs the account id."""
        deleted = self.accounts.erase(account_id, partition)
        self.account_profiles.erase(account_id, partition)
        log.info("erasure on partition %d: %d state keys and the profile deleted", partition, len(deleted))

    async def refuse_erased(self, account_id: str, source: Source) -> bool:
        """Whether the card event of ``source`` is for an erased account, in which case it is
        dead-lettered (``account_erased``) instead of decided: deciding it would store a new state
        and ledger entries under the erased id. The card-event path calls it once the
        event is validated, before it is decided."""
        if not self.account_profiles.erased(account_id):
            return False
        await self.send_dead_letter(ACCOUNT_ERASED, "the account was erased: its card events are no longer processed", source)
        return True

    async def send_dead_letter(self, reason: str, detail: str, source: Source) -> None:
        log.warning("dead letter from %s[%d]@%d: %s (%s)", source.topic, source.partition, source.offset, reason, detail)
        payload = dead_letter(
            self.codec, Stage.MATCHER, reason, detail, source.topic, source.partition, source.offset, source.key, source.value
        )
        self.keep_delivery(await self.sends.send(self.topics.dead_letters.name, source.topic.encode(), payload))

    def keep_delivery(self, delivery: Any) -> None:
        """Keep a send's delivery future: the message's offset is committed only once it succeeded."""
        if delivery is not None and self.current is not None:
            self.current.deliveries.append(delivery)

    async def _trim(self) -> None:
        assert self._trim_heap is not None
        self._trim_heap()  # about a millisecond (stream.heap)

    async def _observe_lag(self) -> None:
        await self.membership.check()  # first: the lag watch stands aside while a rebalance is under way
        await self.inputs.observe_lag()
        self.accounts.observe_memory()
