"""The matcher's consumer commits only what the agent accounted for, whatever Faust acked.

Faust's own commit rule counts a jump in fetched offsets as processed (its gap filling) and lets an
ack just above the committed offset through its gap check: after a table recovery that dropped
fetched messages, it committed past them (faust-streaming #596, #606). These tests drive the real
consumer class of the matcher's app (never started; only ``_commit``, the broker call, and the
producer are fakes) the way Faust's fetch loop and streams do, and pin that none of that moves a
commit past an offset the agent has not processed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from types import SimpleNamespace

import pytest
from faust.types import TP, Message

from stream.guarded_consumer import GuardedConsumer
from stream.matcher import Matcher
from tests.factories import fetched_message


class FlushingProducer:
    async def flush(self) -> None:
        pass


@pytest.fixture
def wired(matcher: Matcher):  # type: ignore[no-untyped-def]
    app = matcher.app
    consumer = app.consumer
    tp = TP(matcher.topics.settlements.name, 1)
    commits: list[dict[TP, int]] = []
    consumer.assignment = lambda: {tp}  # type: ignore[method-assign]

    async def commit_to_broker(offsets: Mapping[TP, int]) -> bool:
        commits.append(dict(offsets))
        return True

    consumer._commit = commit_to_broker  # type: ignore[method-assign]
    app.producer = FlushingProducer()
    return app, consumer, tp, commits


def test_the_matcher_app_uses_the_guarded_consumer(matcher: Matcher) -> None:
    assert isinstance(matcher.app.consumer, GuardedConsumer)
    assert matcher.topics.authorizations.name in matcher.app.guarded_topics
    assert matcher.topics.clock.name in matcher.app.guarded_topics
    # Each partition's inputs handed on in the order they were published (stream.input_order).
    assert matcher.app.consumer.input_order is not None
    assert matcher.app.consumer.input_order.rank == matcher.topics.input_order()


@pytest.mark.asyncio
async def test_the_worker_s_fetches_are_held_by_the_broker_50_ms_at_most(matcher: Matcher) -> None:
    """Faust creates the aiokafka consumer with fetch_max_wait_ms=1500, and aiokafka leaves out of
    its one fetch in flight every partition whose records were not taken yet: a fetch naming only
    quiet partitions was held 1.5 s while card events arrived (the paced benchmark's p50 at 1.5 s).
    The matcher's consumer thread makes the consumer with 50 ms, which aiokafka hands its fetcher."""
    import inspect

    from aiokafka import AIOKafkaConsumer

    from stream.guarded_consumer import FETCH_MAX_WAIT_S, PromptFetches

    thread = matcher.app.consumer._thread
    assert isinstance(thread, PromptFetches)
    consumer = thread._create_worker_consumer(matcher.app.transport)
    assert consumer._fetch_max_wait_ms == int(FETCH_MAX_WAIT_S * 1000) == 50
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)
    # and it reads committed records only (Faust: uncommitted unless the app is transactional); the
    # end to end of an aborted transaction is tests/integration/test_end_to_end.py
    assert consumer._isolation_level == "read_committed"
    assert "isolation_level=self._isolation_level" in inspect.getsource(AIOKafkaConsumer.start)
    await consumer.stop()  # never started: closes its client


@pytest.mark.asyncio
async def test_a_jump_in_fetched_offsets_is_not_committed(wired) -> None:  # type: ignore[no-untyped-def]
    app, consumer, tp, commits = wired
    app.progress.start(tp, 100)
    # Faust's fetch loop saw offset 99 and then 230: it records the jump as a gap.
    await consumer._add_gap(tp, 100, 229)
    for offset in range(230, 240):
        consumer.ack(fetched_message(tp, offset))  # and its stream acked what it delivered
    assert not await consumer.commit()
    assert commits == []


@pytest.mark.asyncio
async def test_an_ack_just_above_the_committed_offset_is_not_committed(wired) -> None:  # type: ignore[no-untyped-def]
    app, consumer, tp, commits = wired
    app.progress.start(tp, 0)  # Faust's own check skips a committed offset of 0 altogether
    consumer.ack(fetched_message(tp, 1))
    consumer.ack(fetched_message(tp, 2))
    assert not await consumer.commit()
    assert commits == []


@pytest.mark.asyncio
async def test_commits_follow_what_the_agent_accounted_for(wired) -> None:  # type: ignore[no-untyped-def]
    app, consumer, tp, commits = wired
    app.progress.start(tp, 100)
    for offset in (100, 101, 102):
        app.progress.verdict(tp, offset)
        app.progress.done(tp, offset)
    assert await consumer.commit()
    assert commits == [{tp: 103}]
    assert app.progress.committable(tp) is None  # told what was committed
    assert not await consumer.commit()  # nothing new
    assert commits == [{tp: 103}]


@pytest.mark.asyncio
async def test_the_agent_hands_each_message_s_deliveries_to_the_accounting(harness) -> None:  # type: ignore[no-untyped-def]
    """An offset becomes committable only when its batch was flushed and its sends are delivered:
    the agent passes the accounting the message's deliveries when it starts processing it, and
    fills them in at the flush."""
    from tests.agent.conftest import ACCOUNT_KEY, EveryOffsetInOrder, encode_auth
    from tests.factories import card_record

    recorded: list[tuple[int, list[object]]] = []

    class Recording(EveryOffsetInOrder):
        def done(self, tp, offset, deliveries=()):  # type: ignore[no-untyped-def]
            recorded.append((offset, deliveries))  # as the accounting keeps them: filled in later

    entries: list[object] = []  # the deliveries of the accruals sent, then of their notifications
    record = harness.sends.send
    outputs = (harness.matcher.topics.accruals.name, harness.matcher.topics.notifications.name)

    async def send(topic, key, value, partition=None, headers=None):  # type: ignore[no-untyped-def]
        delivery = await record(topic, key, value, partition, headers)
        if topic in outputs:
            entries.append(delivery)
        return delivery

    harness.matcher.inputs.progress = Recording()
    harness.matcher.sends.send = send
    await harness.put(encode_auth(harness.codec, card_record(amount_minor=10_000)), ACCOUNT_KEY)
    (offset, deliveries) = recorded[-1]
    flushed, *sends = deliveries
    assert flushed.done() and flushed.exception() is None  # the batch was flushed
    assert len(entries) == 2 and sends == entries  # the PENDING_CREATED entry and its EARNED notification


@pytest.mark.asyncio
async def test_aiokafka_seeks_only_committed_offsets_above_zero() -> None:
    """Pinned library behaviour the override below answers: ``seek_to_committed`` leaves a
    partition with no committed offset (or 0) where the fetcher left it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    never, zero, ten = TopicPartition("t", 0), TopicPartition("t", 1), TopicPartition("t", 2)
    committed = {never: None, zero: 0, ten: 10}
    seeks: list[tuple[TopicPartition, int]] = []

    class Fetcher:
        def seek_to(self, tp: TopicPartition, offset: int) -> None:
            seeks.append((tp, offset))

    class Subscription:
        def assigned_partitions(self) -> set[TopicPartition]:
            return set(committed)

    consumer = AIOKafkaConsumer.__new__(AIOKafkaConsumer)
    consumer._fetcher = Fetcher()  # type: ignore[attr-defined]
    consumer._subscription = Subscription()  # type: ignore[attr-defined]

    async def committed_offset(tp: TopicPartition) -> int | None:
        return committed[tp]

    consumer.committed = committed_offset  # type: ignore[method-assign]
    assert await consumer.seek_to_committed(never, zero, ten) == committed
    assert seeks == [(ten, 10)]


@pytest.mark.asyncio
async def test_a_guarded_partition_never_committed_is_read_from_its_start(wired) -> None:  # type: ignore[no-untyped-def]
    """After a recovery Faust seeks to the committed offsets: a guarded partition with none goes
    back to its start (what the fetcher read while the tables recovered was dropped)."""
    app, consumer, tp, commits = wired
    offers = TP(app.conf.id + "-not-guarded", 0)
    committed_before = TP(tp.topic, 2)

    async def thread_seek_to_committed() -> Mapping[TP, int | None]:
        return {tp: None, offers: None, committed_before: 7}

    seeks: list[tuple[TP, int]] = []

    async def seek(partition: TP, offset: int) -> None:
        seeks.append((partition, offset))

    consumer._thread.seek_to_committed = thread_seek_to_committed  # type: ignore[method-assign]
    consumer._seek = seek  # type: ignore[method-assign]
    await consumer.seek_to_committed()
    assert seeks == [(tp, 0)]


async def drain(consumer, tp: TP, batches: list[list[int]], seek_back_at: int, seek_to: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Run Faust's fetch loop (``Consumer._drain_messages``) over ``batches`` of offsets, the agent
    seeking back to ``seek_to`` when it is handed ``seek_back_at`` (in the middle of a batch, as
    it happens when the agent finds a hole). Returns the offsets handed to the agent."""
    handed: list[int] = []
    pending = list(batches)

    class Fetcher:
        _stopped = asyncio.Event()

    async def seek_in_thread(partition: TP, offset: int) -> None:
        pass

    async def callback(received: Message) -> None:
        handed.append(received.offset)
        if received.offset == seek_back_at and handed.count(seek_back_at) == 1:
            await consumer.seek(tp, seek_to)

    async def getmany(timeout: float):  # type: ignore[no-untyped-def]
        if not pending:
            Fetcher._stopped.set()
            return
        for offset in pending.pop(0):
            yield tp, fetched_message(tp, offset)

    consumer._seek = seek_in_thread
    consumer.callback = callback
    consumer.getmany = getmany
    await asyncio.wait_for(consumer._drain_messages(Fetcher()), 5)
    return handed


@pytest.mark.asyncio
async def test_faust_drops_the_re_read_after_a_seek_back_from_the_middle_of_a_batch(wired) -> None:  # type: ignore[no-untyped-def]
    """Pinned library behaviour: the rest of the batch moves Faust's read position past the seek,
    and the re-read (5-8) falls below it."""
    from collections import defaultdict

    app, consumer, tp, commits = wired
    consumer._read_offset = defaultdict(lambda: None)  # Faust's own read positions
    handed = await drain(consumer, tp, [[10, 11, 12, 13], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]], seek_back_at=11, seek_to=5)
    assert handed == [10, 11, 12, 13, 13, 14]


@pytest.mark.asyncio
async def test_the_guarded_consumer_hands_on_the_re_read_after_a_seek_back(wired) -> None:  # type: ignore[no-untyped-def]
    app, consumer, tp, commits = wired
    handed = await drain(consumer, tp, [[10, 11, 12, 13], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]], seek_back_at=11, seek_to=5)
    assert handed == [10, 11, 12, 13, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]


@pytest.mark.asyncio
async def test_messages_of_one_partition_follow_each_other_in_one_batch(harness) -> None:  # type: ignore[no-untyped-def]
    """A message is accounted for when it is processed, not when its batch is flushed: the next
    offset of its partition, already read, is the next to process, not a hole to seek back for.
    The offsets become committable once the batch was flushed."""
    from stream.progress import InputProgress
    from tests.agent.conftest import encode_auth
    from tests.factories import card_record

    progress = InputProgress()
    tp = TP(harness.auth_topic, harness.home)
    progress.start(tp, 0)
    harness.matcher.inputs.progress = progress
    flushes: list[int] = []
    flush = harness.matcher.outbox.flush

    async def counted_flush() -> None:
        committable = progress.committable(tp)  # nothing the batch holds yet
        assert committable is None or committable <= sum(flushes)
        flushes.append(len(harness.matcher.outbox.batch))
        await flush()

    harness.matcher.outbox.flush = counted_flush
    for n in range(6):
        await harness.put_nowait(encode_auth(harness.codec, card_record(amount_minor=1_000, transaction_ref=f"txn-{n}")))
    await harness.wait_handled(6)
    assert progress.seeks == 0
    assert max(flushes) > 1, "the messages were flushed one by one: no batch to test"
    assert progress.committable(tp) == 6


class BrokerView:
    """The broker's answers to the partition watch: the committed offset, once ``answer`` is set;
    whether a partition's tail holds records (``tail_empty``: none, a transaction's markers)."""

    def __init__(self, committed: int, tail_empty: bool = False) -> None:
        self.committed = committed
        self.tail_empty = tail_empty
        self.answer = asyncio.Event()
        self.answer.set()
        self.asked = 0
        self.holes: list[tuple[TP, int, int]] = []

    async def start_offset(self, tp: TP) -> int:
        self.asked += 1
        await self.answer.wait()
        return self.committed

    async def holds_records(self, tp: TP, start: int, end: int) -> bool:
        self.holes.append((tp, start, end))
        return not self.tail_empty


def watched(wired, highwater: int, position: int | None = None, paused: bool = False):  # type: ignore[no-untyped-def]
    """The wired consumer with a partition ``highwater`` long, the consumer's ``position`` in it (the
    next offset it hands on), its seeks and resumes recorded."""
    app, consumer, tp, commits = wired
    seeks: list[tuple[TP, int]] = []
    resumed: list[TP] = []

    async def seek(partition: TP, offset: int) -> None:
        seeks.append((partition, offset))

    async def consumer_position(partition: TP) -> int | None:
        return position

    consumer.highwater = lambda partition: highwater  # type: ignore[method-assign]
    consumer.position = consumer_position  # type: ignore[method-assign]
    consumer.paused = lambda partition: paused  # type: ignore[method-assign]
    consumer.seek = seek  # type: ignore[method-assign]
    consumer.resume_partitions = lambda tps: resumed.extend(tps)  # type: ignore[method-assign]
    return app, tp, seeks, resumed


async def watch_until_read_again(app, broker, seeks, queued: int = -1, limit: int = 20) -> int:  # type: ignore[no-untyped-def]
    """Watch as a busy agent does (every 5 s in the worker) until the partition is read again, the
    agent's queue holding the partition up to offset ``queued``; the watches it took."""
    from stream.guarded_consumer import watch_partitions

    watches = 0
    while not seeks and watches < limit:
        await watch_partitions(app, broker, True, lambda *_: None, lambda _: queued)
        watches += 1
    return watches


@pytest.mark.asyncio
async def test_a_partition_whose_records_were_handed_on_and_lost_is_read_again_while_the_agent_is_busy(wired) -> None:  # type: ignore[no-untyped-def]
    """The quick benchmark's two-worker stall: after a rebalance a partition (committed at 120, 171
    records) was handed on to its end and none of it reached the agent (Faust's recovery emptied the
    agent's queue), while clock ticks kept the agent busy. The watch accounts for it from its committed
    offset, busy or not, and reads it again at the third watch: its next message is not on its way."""
    app, tp, seeks, resumed = watched(wired, highwater=171, position=171)
    broker = BrokerView(committed=120)
    assert await watch_until_read_again(app, broker, seeks) == 3  # accounted for, watched, read again
    assert app.progress.next_offset(tp) == 120
    assert seeks == [(tp, 120)] and resumed == [tp]


@pytest.mark.asyncio
async def test_a_partition_whose_tail_holds_no_record_is_at_its_end_and_never_read_again(wired) -> None:  # type: ignore[no-untyped-def]
    """A transactional producer's last commit marker: offset 170 of 171 holds no record the consumer
    delivers. The watch asks the broker once the partition has not moved, and accounts for the tail
    instead of reading it again at every watch (the partition one offset behind for good)."""
    app, tp, seeks, resumed = watched(wired, highwater=171, position=171)
    broker = BrokerView(committed=170, tail_empty=True)
    assert await watch_until_read_again(app, broker, seeks) == 20
    assert seeks == [] and broker.holes == [(tp, 170, 171)]  # asked once
    assert app.progress.next_offset(tp) == 171 and app.progress.committable(tp) == 171


@pytest.mark.asyncio
async def test_a_partition_behind_a_backlog_is_not_read_again(wired) -> None:  # type: ignore[no-untyped-def]
    """In the benchmark's drains a partition waited up to 75 s for its first message to reach the
    agent: the consumer had not handed it on yet. Reading it again would only drop what the consumer
    had fetched of it."""
    app, tp, seeks, resumed = watched(wired, highwater=50_000, position=0)
    assert await watch_until_read_again(app, BrokerView(committed=0), seeks) == 20
    assert seeks == []


@pytest.mark.asyncio
async def test_a_partition_whose_next_message_waits_in_the_agent_s_queue_is_not_read_again(wired) -> None:  # type: ignore[no-untyped-def]
    app, tp, seeks, resumed = watched(wired, highwater=171, position=171)
    assert await watch_until_read_again(app, BrokerView(committed=120), seeks, queued=150) == 20
    assert seeks == []


@pytest.mark.asyncio
async def test_a_paused_partition_is_resumed_and_read_again_while_the_agent_is_busy(wired) -> None:  # type: ignore[no-untyped-def]
    app, tp, seeks, resumed = watched(wired, highwater=171, position=120, paused=True)
    assert await watch_until_read_again(app, BrokerView(committed=120), seeks) == 3
    assert seeks == [(tp, 120)] and resumed == [tp]


@pytest.mark.asyncio
async def test_the_watch_never_moves_back_a_partition_the_agent_started_while_the_broker_answered(wired) -> None:  # type: ignore[no-untyped-def]
    """The watch asks the broker where a partition starts; meanwhile the agent may be handed its
    first message, start it itself and process it. Starting it again would take it back below what
    was processed (a seek and a tick applied twice in one run of the quick benchmark)."""
    from stream.guarded_consumer import watch_partitions

    app, tp, seeks, resumed = watched(wired, highwater=2)
    broker = BrokerView(committed=0)
    broker.answer.clear()
    watch = asyncio.create_task(watch_partitions(app, broker, False, lambda *_: None))
    while not broker.asked:
        await asyncio.sleep(0)
    app.progress.start(tp, 0)  # the agent, handed offset 0 meanwhile
    app.progress.verdict(tp, 0)
    app.progress.done(tp, 0)
    broker.answer.set()
    await watch
    assert app.progress.next_offset(tp) == 1


def test_faust_empties_an_agent_s_queue_when_its_flow_control_resumes(matcher: Matcher) -> None:
    """Pinned library behaviour (mode's ``FlowControlEvent.resume``, which Faust's recovery calls
    last, after seeking the stream partitions): a queue made with ``clear_on_resume``, as an agent's
    input queue is (``Channel.queue``), is emptied even when the flow was never suspended. The
    matcher takes its agent's queue out of that (``keep_across_resumes``)."""
    from stream.guarded_consumer import keep_across_resumes

    emptied, kept = (matcher.app.FlowControlQueue(maxsize=10, clear_on_resume=True) for _ in range(2))
    keep_across_resumes(matcher.app, kept)
    for queue in (emptied, kept):
        queue.put_nowait("fetched after the seek to the committed offsets")
    matcher.app.flow_control.resume()
    assert emptied.empty()
    assert kept.qsize() == 1


class AnsweringBrokerView:
    """The broker's answer to where a partition starts, with what happens while it answers."""

    def __init__(self, committed: int, meanwhile) -> None:  # type: ignore[no-untyped-def]
        self.committed, self.meanwhile = committed, meanwhile

    async def start_offset(self, tp: TP) -> int:
        self.meanwhile()
        return self.committed


@pytest.mark.asyncio
async def test_the_agent_leaves_a_partition_revoked_while_the_broker_answered(matcher: Matcher) -> None:
    tp = TP(matcher.topics.authorizations.name, 3)
    inputs = matcher.inputs
    inputs.assigned = {tp}
    inputs.broker_view = AnsweringBrokerView(120, meanwhile=lambda: inputs.assigned.discard(tp))  # type: ignore[assignment]
    assert not await inputs.is_next(tp, 120)
    assert not inputs.progress.knows(tp)  # its next owner accounts for it


@pytest.mark.asyncio
async def test_the_agent_never_moves_back_a_partition_the_watch_started_while_the_broker_answered(matcher: Matcher) -> None:
    tp = TP(matcher.topics.authorizations.name, 3)
    inputs = matcher.inputs
    inputs.assigned = {tp}

    def watch_started_and_agent_processed() -> None:
        inputs.progress.start(tp, 120)
        inputs.progress.verdict(tp, 120)
        inputs.progress.done(tp, 120)

    inputs.broker_view = AnsweringBrokerView(120, meanwhile=watch_started_and_agent_processed)  # type: ignore[assignment]
    assert not await inputs.is_next(tp, 120)  # processed already: skipped, not processed twice
    assert inputs.progress.next_offset(tp) == 121


class ClosingBrokerView:
    def __init__(self) -> None:
        self.closed = 0

    async def close(self) -> None:
        self.closed += 1


@pytest.mark.asyncio
async def test_the_agent_s_broker_clients_are_closed_as_the_app_stops(matcher: Matcher) -> None:
    """Left open, their tasks outlive the app: mode's worker waits a second for them at every
    graceful stop, then cancels them unclosed."""
    view = ClosingBrokerView()
    matcher.inputs.broker_view = view  # type: ignore[assignment]
    await matcher.app.on_before_shutdown.send()  # sent by App.on_stop once the consumer stopped
    assert view.closed == 1


def test_a_partition_paused_by_faust_reads_as_paused(wired) -> None:  # type: ignore[no-untyped-def]
    app, consumer, tp, commits = wired
    assert not consumer.paused(tp)
    consumer.pause_partitions({tp})  # as a rebalance or a table recovery does
    assert consumer.paused(tp)
    consumer.resume_partitions({tp})
    assert not consumer.paused(tp)


@pytest.mark.asyncio
async def test_a_message_handed_on_while_the_position_is_read_is_found_in_the_queue(wired) -> None:  # type: ignore[no-untyped-def]
    """The queue is looked at once the position is known: what the consumer handed on meanwhile is there."""
    from stream.guarded_consumer import on_its_way

    app, consumer, tp, commits = wired
    app.progress.start(tp, 120)
    queue: list[int] = []

    async def position_while_handing_on(partition: TP) -> int:
        queue.append(120)  # the fetch loop puts the message in the agent's queue meanwhile
        return 121

    consumer.position = position_while_handing_on  # type: ignore[method-assign]
    assert await on_its_way(consumer, tp, app.progress, lambda _: max(queue, default=-1))
    queue.clear()
    consumer.position = lambda partition: asyncio.sleep(0, 121)  # type: ignore[method-assign]
    assert not await on_its_way(consumer, tp, app.progress, lambda _: max(queue, default=-1))  # handed on, and lost
    # Kept by the consumer until its partition's other topics are read (stream.input_order): on its way.
    assert consumer.input_order is not None
    consumer.input_order.kept[tp] = deque([SimpleNamespace(offset=120, timestamp=1)])
    assert await on_its_way(consumer, tp, app.progress, lambda _: max(queue, default=-1))


@pytest.mark.asyncio
async def test_the_watch_seeks_nothing_revoked_while_the_consumer_answered(wired) -> None:  # type: ignore[no-untyped-def]
    """A seek on a partition the consumer no longer holds fails (aiokafka: no current assignment), and
    a failing timer would stop the worker."""
    from stream.guarded_consumer import watch_partitions

    app, tp, seeks, resumed = watched(wired, highwater=171, position=171)
    consumer = app.consumer
    app.progress.start(tp, 120)
    await watch_partitions(app, BrokerView(committed=120), True, lambda *_: None)  # watched
    revoked = False

    async def position_then_revoked(partition: TP) -> int:
        nonlocal revoked
        revoked = True
        return 171

    consumer.position = position_then_revoked  # type: ignore[method-assign]
    consumer.assignment = lambda: set() if revoked else {tp}  # type: ignore[method-assign]
    await watch_partitions(app, BrokerView(committed=120), True, lambda *_: None)
    assert revoked and seeks == []
