"""The matcher's Faust app with the commit decision taken away from Faust's acks.

Faust commits "the highest run of acknowledged offsets", where any jump in fetched offsets counts
as acknowledged (its gap filling for compacted topics), and where an offset just above the
committed one passes its gap check (faust-streaming #596, #606: after a recovery it committed past
messages no agent saw). Here, for the agent's input topics, the committable offset comes from
``stream.progress.InputProgress`` alone: the agent marks an offset done only once it has handed
the offset's effects to the producer, and Faust's commit path still flushes the producer before it
commits (``Consumer._commit_offsets``), so the order stays: effects, flush, offsets.

The overrides, each pinned by ``tests/agent/test_guarded_consumer.py``:

- ``_new_offset``: the progress's committable offset (Faust's ack lists are emptied, unused);
- ``_filter_tps_with_pending_acks``: also the partitions the progress holds (acked or not);
- ``_add_gap``: nothing: a jump in offsets is never counted as processed;
- ``_read_offset`` (``ReadPositions``): none for a guarded partition, so that Faust's fetch loop
  never drops the re-read that follows a seek back;
- ``_commit_offsets``: tells the progress what was committed;
- ``seek_to_committed`` (Faust's seek after a recovery): also moves a partition with no committed
  offset back to its start. aiokafka's ``seek_to_committed`` seeks only committed offsets above 0,
  so such a partition kept the position the fetcher reached while the tables recovered, past the
  messages Faust dropped meanwhile: a worker restarted after kill -9 (which then rebuilt its tables) never
  saw the clearings published while it was down;
- ``on_task_error`` (``stream.stopping.ExitOnAgentFailure``; ``tests/integration/test_restart.py``).

And ``keep_across_resumes`` keeps the agent's input queue from being emptied as each table recovery
ends (Faust's recovery resumes its flow control after seeking the stream partitions, which emptied
what the consumer had fetched in between).

Its consumer thread (``PromptFetches``) also asks the broker to hold an empty fetch for at most
``FETCH_MAX_WAIT_S`` instead of Faust's hard-coded 1.5 s (see there). Its stop and last commit,
the producer's stop and the app's flush before them are bounded (``stream.worker_stop``).

``watch_partitions`` reports each guarded partition's lag and reads again a partition stuck below
its end. ``OffsetLookups`` asks the broker, outside the group, what the agent cannot learn from Faust:
where a partition's accounting starts, and whether a hole holds records.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar, cast

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from faust.transport.consumer import ensure_TP
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from stream.direct_delivery import DirectDelivery
from stream.input_order import OrderedFetches
from stream.kafka_clients import start_client
from stream.progress import InputProgress
from stream.settings import Settings
from stream.stopping import ExitOnAgentFailure
from stream.worker_stop import BoundedLastCommit, BoundedStopProducer, StoppingConsumerThread, flush_within

log = logging.getLogger(__name__)
T = TypeVar("T")


# How long the broker may hold the worker's fetch when none of the partitions it names has a record.
# aiokafka keeps one fetch in flight per broker and leaves out of it every partition whose fetched
# records the agent has not taken yet; Faust creates its consumer with fetch_max_wait_ms=1500. So a
# fetch sent while the card partitions' last records were still being taken named only quiet
# partitions (the clock, the account topics), and the broker held it 1.5 s while card events
# arrived: at 1,000 events/s the worker then settled into reading each card event 0.4-3 s after it
# was published (the benchmark's paced stage: p50 1.5 s at the worker, its stream nearly empty).
FETCH_MAX_WAIT_S = 0.05


class PromptFetches(StoppingConsumerThread):
    """Faust's consumer thread, its aiokafka consumer fetching with ``FETCH_MAX_WAIT_S`` and reading
    committed records only: Faust reads uncommitted ones unless the app itself is transactional, so
    a card processor's transaction it aborted was decided and paid like any purchase."""

    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = int(FETCH_MAX_WAIT_S * 1000)  # both read at its start, by its fetcher
        consumer._isolation_level = "read_committed"
        return consumer


class ReadPositions(defaultdict[TP, int | None]):
    """Faust's read position per partition, except that a guarded partition has none.

    Faust's fetch loop drops a message below the partition's read position, and sets that
    position after each message it hands on, including the rest of a batch fetched before a seek
    back: the seek's re-read then fell below it and was dropped, until a later seek. In the chaos
    run a joining worker lost 7 s so, twice over, before its first decision. The agent's
    accounting (``stream.progress``) already skips what it processed and what was buffered before
    a seek, so every message of a guarded partition is handed on."""

    def __init__(self, guarded: Callable[[TP], bool]) -> None:
        super().__init__(lambda: None)
        self.guarded = guarded

    def __getitem__(self, tp: TP) -> int | None:
        return None if self.guarded(tp) else super().__getitem__(tp)


class GuardedConsumer(BoundedLastCommit, OrderedFetches, DirectDelivery, ExitOnAgentFailure, faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, committing only what ``app.progress`` says is accounted for, its fetch loop
    handing messages on directly when nothing can hold them (``stream.direct_delivery``), each partition's
    messages of ``app.ordered_topics`` in the order they were published (``stream.input_order``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_offset = ReadPositions(self._guarded)
        ordered: Mapping[str, int] = self.app.ordered_topics  # type: ignore[attr-defined]
        if ordered:
            self.order_inputs(ordered)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return PromptFetches(self, loop=self.loop, beacon=self.beacon)

    def _guarded(self, tp: TP) -> bool:
        return tp.topic in self.app.guarded_topics  # type: ignore[attr-defined]

    def _new_offset(self, tp: TP) -> int | None:
        if not self._guarded(tp):
            return super()._new_offset(tp)
        self._acked[tp].clear()
        self._acked_index[tp].clear()
        progress: InputProgress = self.app.progress  # type: ignore[attr-defined]
        return progress.committable(tp)

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        progress: InputProgress = self.app.progress  # type: ignore[attr-defined]
        candidates = set(super()._filter_tps_with_pending_acks(topics))
        known = cast(list[TP], progress.partitions())  # the accounting keys partitions by Faust's TP
        candidates.update(tp for tp in known if topics is None or tp in topics or tp.topic in topics)
        return iter(candidates)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if not self._guarded(tp):
            await super()._add_gap(tp, offset_from, offset_to)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        for tp, offset in committed.items():
            if self._guarded(ensure_TP(tp)) and not (offset and offset > 0):
                # Never committed: read from the log start (the reset policy moves a seek below
                # it up to the earliest record). aiokafka seeks only offsets above 0, and the
                # position stays wherever the fetcher was, past what a table recovery dropped.
                await self.seek(ensure_TP(tp), 0)
        return committed

    def paused(self, tp: TP) -> bool:
        """Whether Faust holds the partition paused (a rebalance, a table recovery), as opposed to
        fetchable or only held while its messages fill the agent's queue."""
        return tp in self._paused_partitions

    async def _commit_offsets(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        did_commit = await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)
        if did_commit:
            progress: InputProgress = self.app.progress  # type: ignore[attr-defined]
            for tp, offset in offsets.items():
                progress.committed(tp, offset)
        return did_commit


class GuardedTransport(faust_aiokafka.Transport):
    Consumer = GuardedConsumer
    Producer = BoundedStopProducer


class GuardedApp(faust.App):
    """A Faust app whose consumer commits the agent's own accounted-for offsets on ``guarded_topics``
    and hands on each partition's messages of ``ordered_topics`` in the order they were published."""

    def __init__(
        self, *args: Any, guarded_topics: frozenset[str], ordered_topics: Mapping[str, int] | None = None, **kwargs: Any
    ) -> None:
        self.progress = InputProgress()
        self.guarded_topics = guarded_topics
        self.ordered_topics = dict(ordered_topics or {})
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Any:
        return GuardedTransport(self.conf.broker_consumer, self)

    def on_init_dependencies(self) -> Iterable[Any]:
        """Faust's, without its ``Monitor`` among the sensors: a sensor is called four times for
        every message (in, stream in, stream out, out), and the Monitor's statistics serve Faust's
        web views, which a worker does not run (its metrics are Prometheus': ``stream.metrics``).
        The consumer still reports offsets to ``app.monitor`` directly."""
        dependencies = super().on_init_dependencies()
        self.sensors.remove(self.monitor)
        return dependencies

    async def _producer_flush(self, logger: Any) -> None:
        """Faust's flush, bounded at a stop (``stream.worker_stop``); never when partitions are
        revoked, where it keeps a table change from reaching the changelog after the next owner's."""
        flushing = super()._producer_flush(logger)
        await (flush_within(flushing) if self.should_stop else flushing)


def keep_across_resumes(app: faust.App, queue: Any) -> None:
    """Take the agent's input queue out of those Faust empties when its flow control resumes.

    ``FlowControlEvent.resume`` (mode) empties every queue made with ``clear_on_resume``, an agent's
    input queue among them, and Faust's recovery calls it at its very end, after it resumed the
    stream partitions and sought them to their committed offsets: what the consumer fetched from
    those offsets and handed the agent in between was emptied out, its offsets passed. After a
    rebalance in the quick benchmark's two-worker stage a partition's last 51 records went so, and
    nothing of that partition ever reached the agent. The agent's own accounting already sets aside
    what is stale (``stream.input_partitions``: a revoked partition, an offset processed, a hole read
    again), and Faust's stream skips messages of an earlier generation, so nothing needs emptying."""
    app.flow_control._queues.discard(queue)


class OffsetLookups:
    """What the agent asks the broker directly, with clients of its own that never join the group:
    where a partition's accounting starts (the group's committed offset, or the log start), and
    whether a hole in what the consumer delivered really holds no record."""

    def __init__(self, group_id: str, bootstrap_servers: str, **client_options: Any) -> None:
        self._group_id = group_id
        self._options = {"bootstrap_servers": bootstrap_servers, **client_options}
        self._admin: AIOKafkaAdminClient | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._reading = asyncio.Lock()  # one question at a time to the reader: the agent's and the watch's

    async def _until_answered(self, what: str, ask: Callable[[], Awaitable[T]]) -> T:
        """Ask until the broker answers: while it is away (a restart), the caller waits, it never
        goes on without the answer."""
        delay = 0.2
        while True:
            try:
                return await ask()
            except (KafkaError, OSError) as error:
                log.warning("broker did not answer %s (%s); asking again in %.1fs", what, type(error).__name__, delay)
                await self.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._reader is None:
            admin = AIOKafkaAdminClient(**self._options)
            # It reads what the worker's consumer reads (``PromptFetches``): committed records only, so an
            # aborted record is no record in a hole, as the consumer never delivers it.
            reader = AIOKafkaConsumer(enable_auto_commit=False, isolation_level="read_committed", **self._options)
            try:
                await start_client(admin)
                await start_client(reader)
            except BaseException:
                await _close_quietly(admin, reader)
                raise
            self._admin, self._reader = admin, reader
        return self._admin, self._reader

    async def start_offset(self, tp: TP) -> int:
        return await self._until_answered("where a partition starts", lambda: self._start_offset(tp))

    async def holds_records(self, tp: TP, start: int, end: int) -> bool:
        """Whether offsets [start, end) of ``tp`` hold any record."""
        async with self._reading:
            return await self._until_answered("what a hole holds", lambda: self._holds_records(tp, start, end))

    async def _start_offset(self, tp: TP) -> int:
        admin, reader = await self._clients()
        partition = TopicPartition(tp.topic, tp.partition)
        committed = (await admin.list_consumer_group_offsets(self._group_id, partitions=[partition])).get(partition)
        log_start = (await reader.beginning_offsets([partition]))[partition]
        if committed is None or committed.offset < 0:
            return log_start
        # Below the log start (retention), the consumer resets to the earliest record, as configured.
        return max(committed.offset, log_start)

    async def _holds_records(self, tp: TP, start: int, end: int, timeout_s: float = 10.0) -> bool:
        # True when the broker does not answer in time: the caller then reads again (the safe side).
        _, reader = await self._clients()
        partition = TopicPartition(tp.topic, tp.partition)
        reader.assign([partition])
        reader.seek(partition, start)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await reader.getmany(partition, timeout_ms=500)
            for record in batch.get(partition, []):
                return record.offset < end
            if await reader.position(partition) >= end:  # past the hole with no record in it
                return False
        return True

    async def close(self) -> None:
        admin, reader, self._admin, self._reader = self._admin, self._reader, None, None
        await _close_quietly(admin, reader)


async def _close_quietly(admin: AIOKafkaAdminClient | None, reader: AIOKafkaConsumer | None) -> None:
    for stop in (admin.close if admin else None, reader.stop if reader else None):
        if stop is not None:
            try:
                await stop()
            except (KafkaError, OSError):  # already broken: nothing to close politely
                pass


# How long the watch waits for the consumer's position of a partition: it may wait for a reset (a
# seek) in the consumer's thread; not knowing it, the watch takes the partition's message as on its way.
POSITION_WAIT_S = 1.0


async def watch_partitions(
    app: GuardedApp,
    broker_view: OffsetLookups,
    busy: bool,
    lag: Callable[[TP, int], None],
    queued: Callable[[TP], int] = lambda tp: -1,
) -> None:
    """Called periodically: report each guarded partition's lag (``lag(tp, behind)``), and read a
    partition again from where it stopped when it is stuck below its end (``InputProgress.stalled``:
    a send failed, or it has not moved since the previous call while its next message is not on its
    way, ``on_its_way``). ``busy``: the agent processed messages since the previous call; ``queued``:
    the highest offset of a partition among the messages waiting in the agent's queue (-1: none)."""
    consumer = app.consumer
    if app.rebalancing:
        return
    for tp in consumer.assignment():
        if tp.topic not in app.guarded_topics:
            continue
        try:
            highwater = consumer.highwater(tp)
        except (KeyError, AssertionError):
            continue
        if highwater is None:
            continue
        if not app.progress.knows(tp):
            # Nothing delivered since the assignment: the partition may have been left paused, or
            # its records dropped on their way to the agent. Accounted for from here, it is read
            # again once it does not move (busy or not: a worker with traffic elsewhere is never idle).
            if highwater > 0:
                start = await broker_view.start_offset(tp)
                # Meanwhile the agent may have started it (and processed from it), or a rebalance taken it.
                if not app.progress.knows(tp) and not app.rebalancing and tp in consumer.assignment():
                    app.progress.start(tp, start)
            else:
                lag(tp, 0)
            continue
        next_offset = app.progress.next_offset(tp)
        lag(tp, max(0, highwater - next_offset))
        coming = busy and app.progress.waits(tp, highwater) and await on_its_way(consumer, tp, app.progress, queued)
        if app.rebalancing or tp not in consumer.assignment():  # while the consumer answered: nothing to seek
            continue
        stuck_at = app.progress.stalled(tp, highwater, busy, coming)
        if stuck_at == next_offset and not await broker_view.holds_records(tp, stuck_at, highwater):
            app.progress.past_empty_tail(tp, stuck_at, highwater)  # a transaction's markers at the end, no record
            continue
        if stuck_at is not None:
            log.warning(
                "%s[%d]: reading again from offset %d (a send failed, or nothing of it reached the agent since the last check)",
                tp.topic,
                tp.partition,
                stuck_at,
            )
            consumer.resume_partitions([tp])
            await consumer.seek(tp, stuck_at)


async def on_its_way(consumer: Any, tp: TP, progress: InputProgress, queued: Callable[[TP], int]) -> bool:
    """Whether the next message of ``tp`` the agent must process is on its way to it: the consumer
    has not handed it on yet (its position is not past it) and the partition is not paused, or it
    waits in the agent's queue, or the consumer keeps it until its partition's other topics are read
    (``stream.input_order``). Handed on and not in the queue, it was dropped on the way (as Faust's
    recovery emptied the agent's queue: ``keep_across_resumes``). The queue is looked at after the
    position is known, so that whatever was handed on before is there, or processed."""
    try:
        position = await asyncio.wait_for(consumer.position(tp), POSITION_WAIT_S)
    except Exception:  # noqa: BLE001 - not known here (a reset under way, the consumer's thread stopping): left to the backstop
        return True
    if position is None or not progress.knows(tp):  # not known, or revoked meanwhile
        return True
    if position <= progress.next_offset(tp):
        return not consumer.paused(tp)
    return queued(tp) >= progress.next_offset(tp) or consumer.keeps(tp, progress.next_offset(tp))


def broker_credentials(settings: Settings) -> Any:
    """Faust's form of the Kafka security settings (None for PLAINTEXT)."""
    if settings.kafka_security_protocol.startswith("SASL"):
        options = settings.kafka_client_options()
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=cast(ssl.SSLContext | None, options.get("ssl_context")),
        )
    if settings.kafka_security_protocol == "SSL":
        return faust.SSLCredentials(cast(ssl.SSLContext, settings.kafka_client_options()["ssl_context"]))
    return None
