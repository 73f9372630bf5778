"""The matcher's input partitions: which ones this worker owns, whether a message is the next one of
its partition to process, what a rebalance takes and gives, and the watch for a partition stuck
below its end.

Which offsets are committed is the matcher's decision, not Faust's acks: a message is processed
only when it is the next offset of its partition (``stream.progress``), a hole is read again, and
an offset is committed once its sends were delivered (``stream.guarded_consumer``). A message whose
partition was revoked while it waited is left to the partition's next owner (``still_owned``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from stream.guarded_consumer import GuardedApp, OffsetLookups, watch_partitions
from stream.metrics import CONSUMER_LAG, forget_lag
from stream.progress import Verdict

log = logging.getLogger(__name__)


class PartitionRevoked(Exception):
    """The partition of the message being processed was revoked while it waited: stop, decide nothing."""


class InputPartitions:
    """The input partitions of one worker and where each stands."""

    def __init__(
        self,
        app: GuardedApp,
        broker_view: OffsetLookups,
        app_id: str,
        card_topics: Iterable[str],
        lost: Callable[[Iterable[Any]], None],
        handing_over: asyncio.Lock | None = None,
    ) -> None:
        """``card_topics``: those whose lag is reported; ``lost(partitions)``: partitions whose
        state may change elsewhere from now on (revoked, or assigned anew); ``handing_over``: held
        while table changes are handed to the producer, which a revocation waits for
        (``stream.changelog_table``)."""
        self.app = app
        self.progress = app.progress
        self.broker_view = broker_view
        self.app_id = app_id
        self.card_topics = frozenset(card_topics)
        self.lost = lost
        self.handing_over = handing_over or asyncio.Lock()
        self.rebalances = 0  # revocations so far: a batch begun before one is dropped
        self.assigned: set[Any] = set()  # the input partitions this worker owns now
        self.current_tp: Any = None  # the partition of the message being processed
        self.processed = self._processed_at_watch = 0  # messages processed; at the last watch
        self.agent_queue: Any = None  # the agent's input queue (its stream's channel's), once it runs
        # Faust sends these signals as (app, <partitions>), which its own typing does not express.
        app.on_partitions_revoked.connect(self._on_partitions_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(self._on_partitions_assigned)  # type: ignore[arg-type]
        # Its broker clients closed once the consumer stopped: a graceful stop leaves none of their
        # tasks behind (mode's worker would wait a second for them, then cancel them unclosed).
        app.on_before_shutdown.connect(self._on_before_shutdown)  # type: ignore[arg-type]

    async def is_next(self, tp: Any, offset: int) -> bool:
        """Whether the message at ``offset`` is the next one of its partition to process
        (stream.progress). Below it: already processed. Above it: a hole, read again first."""
        if tp not in self.assigned:
            return False  # revoked while buffered: its next owner reads it from the committed offset
        if not self.progress.knows(tp):
            start = await self.broker_view.start_offset(tp)
            if tp not in self.assigned:
                return False  # revoked while the broker answered
            if not self.progress.knows(tp):  # the partition watch may have started it meanwhile
                log.info("accounting for %s[%d] from offset %d (first delivered: %d)", tp.topic, tp.partition, start, offset)
                self.progress.start(tp, start)
        verdict = self.progress.verdict(tp, offset)
        if verdict in (Verdict.PROCESS, Verdict.SKIP):
            return verdict is Verdict.PROCESS
        missing_from = self.progress.next_offset(tp)
        if verdict is Verdict.CHECK_HOLE:
            empty = not await self.broker_view.holds_records(tp, missing_from, offset)
            verdict = self.progress.hole_checked(tp, offset, empty)
            if empty:
                log.warning(
                    "offsets %d-%d of %s[%d] hold no record (compaction or transaction markers)",
                    missing_from,
                    offset - 1,
                    tp.topic,
                    tp.partition,
                )
        if verdict is Verdict.SEEK:
            log.warning(
                "offsets %d-%d of %s[%d] were never delivered; reading them again",
                missing_from,
                offset - 1,
                tp.topic,
                tp.partition,
            )
            await self.app.consumer.seek(tp, missing_from)
        return verdict is Verdict.PROCESS

    def done(self, tp: Any, offset: int, deliveries: list[Any]) -> None:
        """The message at ``offset`` was processed; committed once ``deliveries`` succeeded."""
        self.progress.done(tp, offset, deliveries)
        self.processed += 1

    async def read_again(self, messages: Iterable[tuple[Any, int]]) -> None:
        """Messages processed and then dropped before any of their effects left (topic-partition,
        offset): each partition is read again from the first of them, before anything after it
        (what is already buffered after it is a hole: skipped until the re-read comes)."""
        first: dict[Any, int] = {}
        for tp, offset in messages:
            first[tp] = min(offset, first.get(tp, offset))
        for tp, offset in first.items():
            back_to = self.progress.read_again(tp, offset)
            if back_to is not None and tp in self.assigned:
                await self.app.consumer.seek(tp, back_to)

    def still_owned(self, partitions: Iterable[Any] | None = None, since: int | None = None) -> None:
        """Raise PartitionRevoked when the message being processed (or one of ``partitions``) lost
        its partition while it waited (Faust does not wait for the agent before a rebalance
        completes: stream_wait_empty is off), or when a rebalance happened after ``since`` (a
        partition may have gone and come back, its state changed elsewhere meanwhile). Its next
        owner reads it from the committed offset; deciding it here too would apply it twice, on
        two states."""
        if self.current_tp is not None and self.current_tp not in self.assigned:
            raise PartitionRevoked(self.current_tp)
        lost = [tp for tp in partitions or () if tp not in self.assigned]
        if lost:
            raise PartitionRevoked(*lost)
        if since is not None and since != self.rebalances:
            raise PartitionRevoked(*(partitions or ()))

    async def _on_partitions_revoked(self, app: Any, revoked: set[Any], **_: Any) -> None:
        """Wait for table changes being handed to the producer, commit what was accounted for
        (flushing the producer first, changes included), then forget the revoked partitions."""
        self.assigned.difference_update(revoked)
        self.rebalances += 1
        async with self.handing_over:  # Faust flushed the producer before this signal: again, for them
            pass
        await self.app.producer.flush()
        await self.app.consumer.commit()
        self.progress.forget(revoked)
        self.lost(revoked)
        for tp in revoked:  # their next owner reports their lag: a stale value here would hold the lag alert
            forget_lag(self.app_id, tp.topic, tp.partition)

    async def _on_before_shutdown(self, app: Any, **_: Any) -> None:
        await self.broker_view.close()

    async def _on_partitions_assigned(self, app: Any, assigned: set[Any], **_: Any) -> None:
        """The whole new assignment; a partition's accounting restarts from its committed offset."""
        self.progress.forget(tp for tp in list(self.assigned) if tp not in assigned)
        # Whatever was held of a partition before may have changed under another owner meanwhile.
        self.lost(assigned)
        self.assigned = set(assigned)

    async def observe_lag(self) -> None:
        """The lag gauge, and the watch for a partition stuck below its end (stream.guarded_consumer)."""
        busy, self._processed_at_watch = self.processed != self._processed_at_watch, self.processed

        def lag(tp: Any, behind: int) -> None:
            if tp.topic in self.card_topics:
                CONSUMER_LAG.labels(self.app_id, tp.topic, str(tp.partition)).set(behind)

        await watch_partitions(self.app, self.broker_view, busy, lag, self.highest_queued)

    def highest_queued(self, tp: Any) -> int:
        """The highest offset of ``tp`` among the messages waiting in the agent's queue (-1: none)."""
        highest = -1
        for item in list(getattr(self.agent_queue, "_queue", ())):  # an asyncio queue's deque
            message = getattr(item, "message", None)
            if message is not None and message.tp == tp and message.offset > highest:
                highest = message.offset
        return highest
