"""A partition's messages handed to the agent in the order they were published across its topics.

The matcher reads many co-partitioned topics (the card events, the account profiles and
activations, the bank's instructions, payouts, the clock): partition ``p`` of each holds the same
accounts. Faust's fetch loop hands on what each fetch brought round robin, a message from each
topic in turn, so a worker catching up on a backlog of several topics (after an outage, a
redeploy) decided a clearing before its authorisation (a force post and a reconciliation item,
where a pending line and its confirmation were due) and a purchase before the activation published
ahead of it (the purchase earned nothing). ``tests/integration/test_backlog_order.py`` showed both.

So the consumer keeps what a fetch brought of those topics (``InputOrder``) and hands on each
partition number's messages by their timestamps (CreateTime as the publisher set it, or the
broker's LogAppendTime; at the same millisecond, by their topics' rank: ``Catalogue.input_order``),
as Kafka Streams does across a task's partitions. A message is handed on only when no other topic
of its partition can have an earlier one on its way: each topic of the partition either has a
message kept, or has been read to its end as the last fetch knew it (its position at its highwater
mark). Otherwise the partition waits for the next fetch, at most ``MAX_WAIT_S``: a topic that does
not reach its end (stuck below it, never fetched) does not hold the others longer, and the wait
that ran out is logged and counted. A topic Faust holds paused is neither handed on nor waited for.

A topic's kept messages leave it out of the next fetches (aiokafka keeps at most one fetch of a
partition it was not asked for), so what is kept is bounded by a fetch per partition. What is
kept is only kept: its offsets are committed once the agent has processed them (``stream.progress``),
as before. It is dropped when the partition is revoked, when the consumer's position moved under
it (a seek, after which the fetcher reads it again), and when Faust seeks back to the committed
offsets or a new generation begins, as Faust drops what it fetched then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, cast

from faust.types import TP

from stream.metrics import WORKER_ORDER_TIMEOUTS

log = logging.getLogger(__name__)

# The longest a partition's kept messages wait for another of its topics to be read to its end.
MAX_WAIT_S = 2.0
# How long a fetch that has no partition to ask for waits instead.
FETCH_PAUSE_S = 0.05


class InputOrder:
    """The kept messages of the ordered topics, handed on per partition number by timestamp.

    ``rank`` names the ordered topics, each with its place among messages of the same
    millisecond. ``behind(tp)`` says whether the fetcher knows of records of ``tp`` not read yet
    (or does not know where its end is); ``position(tp)`` is the fetcher's position, or None."""

    def __init__(
        self,
        rank: Mapping[str, int],
        behind: Callable[[TP], bool],
        position: Callable[[TP], int | None],
        max_wait_s: float = MAX_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rank = dict(rank)
        self.behind = behind
        self.position = position
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.kept: dict[TP, deque[Any]] = {}
        self.kept_at: dict[TP, int | None] = {}  # the fetcher's position when the messages were kept
        self.waiting_since: dict[int, float] = {}  # partition number: when its wait began
        self.timed_out: set[int] = set()  # the partitions whose wait went past max_wait_s
        self.timeouts = 0

    def ordered(self, tp: TP) -> bool:
        return tp.topic in self.rank

    def holding(self) -> set[TP]:
        """The partitions with messages kept: left out of the next fetch."""
        return {tp for tp, records in self.kept.items() if records}

    def keeps(self, tp: TP, offset: int) -> bool:
        """Whether the message of ``tp`` at ``offset`` is kept, or one after it (a gap between)."""
        records = self.kept.get(tp)
        return records is not None and len(records) > 0 and offset <= records[-1].offset

    def keep(self, tp: TP, records: Iterable[Any]) -> None:
        self.kept.setdefault(tp, deque()).extend(records)
        self.kept_at[tp] = self.position(tp)

    def drop(self, tps: Iterable[TP] | None = None) -> None:
        """Forget what is kept of ``tps`` (every partition when None)."""
        for tp in list(self.kept) if tps is None else tps:
            self.kept.pop(tp, None)
            self.kept_at.pop(tp, None)
        if tps is None:
            self.waiting_since.clear()
            self.timed_out.clear()

    def release(self, assigned: set[TP], may_deliver: Callable[[TP], bool]) -> list[tuple[TP, Any]]:
        """The kept messages that can be handed on now, in order, each partition number's in turn.

        ``assigned`` is the consumer's assignment; ``may_deliver(tp)``: whether Faust would hand on
        a message of ``tp`` now (not paused). Kept messages of a partition no longer assigned, or
        whose position moved since, are dropped (and a partition emptied is forgotten, so the
        fetcher's position is read only for partitions still kept)."""
        stale = [
            tp
            for tp, records in self.kept.items()
            if not records or tp not in assigned or self.position(tp) != self.kept_at[tp]  # emptied, revoked, sought
        ]
        self.drop(stale)
        groups: dict[int, list[TP]] = {}
        for tp in assigned:
            if tp.topic in self.rank and may_deliver(tp):
                groups.setdefault(tp.partition, []).append(tp)
        for partition in [p for p in self.waiting_since if p not in groups]:  # revoked, or paused whole
            self._waited(partition)
        out: list[tuple[TP, Any]] = []
        for partition, members in groups.items():
            self._release_group(partition, members, out)
        return out

    def _release_group(self, partition: int, members: list[TP], out: list[tuple[TP, Any]]) -> None:
        kept = self.kept
        rank = self.rank
        while True:
            heads = [tp for tp in members if kept.get(tp)]
            if not heads:  # a wait ends when its topics are read, not when the others run dry
                if partition in self.waiting_since and not any(self.behind(tp) for tp in members):
                    self._waited(partition)
                return
            unread = [tp for tp in members if not kept.get(tp) and self.behind(tp)]
            if unread and not self._waited_enough(partition, unread):
                return
            if not unread:
                self._waited(partition)
            if len(heads) == 1:
                (tp,) = heads
                records = kept[tp]
                out.extend((tp, record) for record in records)
                records.clear()
                continue
            # The topic with the earliest head hands on every message before the next topic's head.
            heads.sort(key=lambda tp: (kept[tp][0].timestamp, rank[tp.topic]))
            first, second = heads[0], heads[1]
            records = kept[first]
            limit = (kept[second][0].timestamp, rank[second.topic])
            first_rank = rank[first.topic]
            while records and (records[0].timestamp, first_rank) < limit:
                out.append((first, records.popleft()))

    def _waited_enough(self, partition: int, unread: list[TP]) -> bool:
        """Whether the partition has waited ``max_wait_s`` for ``unread`` (logged once a wait)."""
        now = self.clock()
        since = self.waiting_since.setdefault(partition, now)
        if now - since < self.max_wait_s:
            return False
        if partition not in self.timed_out:
            self.timed_out.add(partition)
            self.timeouts += 1
            WORKER_ORDER_TIMEOUTS.inc()
            topics = ", ".join(sorted(tp.topic for tp in unread))
            log.warning("partition %d: kept messages handed on after %.1fs waiting for %s", partition, now - since, topics)
        return True

    def _waited(self, partition: int) -> None:
        """The partition waits for nothing (any more)."""
        self.waiting_since.pop(partition, None)
        self.timed_out.discard(partition)


class OrderedFetches:
    """A mixin for Faust's consumer (before it in the bases): ``getmany`` hands on the ordered
    topics' messages through ``InputOrder`` (module doc), the others as Faust does."""

    input_order: InputOrder | None = None

    def order_inputs(self, rank: Mapping[str, int]) -> None:
        """Order the messages of the topics of ``rank`` (its values: their places at a tie)."""
        self.input_order = InputOrder(rank, self._behind, self._fetch_position)

    def keeps(self, tp: TP, offset: int) -> bool:
        """Whether the message of ``tp`` at ``offset`` is kept here, on its way to the agent."""
        return self.input_order is not None and self.input_order.keeps(tp, offset)

    def _fetch_state(self, tp: TP) -> Any:
        consumer: Any = self
        try:
            subscription = consumer._thread._ensure_consumer()._subscription.subscription
        except Exception:  # noqa: BLE001 - not started
            return None
        if subscription is None or subscription.assignment is None:
            return None
        return subscription.assignment.state_value(tp)

    def _fetch_position(self, tp: TP) -> int | None:
        state = self._fetch_state(tp)
        return state.position if state is not None and state.has_valid_position else None

    def _behind(self, tp: TP) -> bool:
        state = self._fetch_state(tp)
        if state is None or not state.has_valid_position or state.highwater is None:
            return True  # where its end is, the fetcher does not know yet
        return bool(state.position < state.highwater)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        order = self.input_order
        if order is not None and active_partitions:
            holding = order.holding()
            if holding:
                active_partitions = active_partitions - holding
                if not active_partitions:  # nothing else to fetch: no busy loop meanwhile
                    await asyncio.sleep(FETCH_PAUSE_S)
                    return {}
        return await super()._getmany(active_partitions, timeout)  # type: ignore[misc]

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        # Faust's Consumer.getmany, with the ordered topics' records kept and released in order.
        consumer = cast(Any, self)
        order = self.input_order
        if order is None:
            async for item in super().getmany(timeout):  # type: ignore[misc]
                yield item
            return
        records, active_partitions = await consumer._wait_next_records(timeout)
        generation_id = consumer.app.consumer_generation_id
        if records is None or consumer.should_stop:
            return
        if not consumer.flow_active:
            order.drop()
            consumer.log.dev("getmany called while flow not active. Seek back to committed offsets.")
            try:
                await consumer.perform_seek()
            except Exception as ex:  # noqa: BLE001 - as Faust
                consumer.log.warning(f"exception performing seek when flow not active {ex}")
            return
        buffered = consumer._buffered_partitions

        def may_deliver(tp: TP) -> bool:
            return active_partitions is None or tp in active_partitions or tp in buffered

        passing: dict[TP, list[Any]] = {}
        for tp, tp_records in records.items():
            if order.ordered(tp):
                order.keep(tp, tp_records)
            else:
                passing[tp] = tp_records
        assigned = cast(set[TP], consumer.assignment())
        released = order.release(assigned, may_deliver)
        to_message = consumer._to_message
        track = consumer.app.monitor.track_tp_end_offset
        highwater = consumer.highwater
        for tp, record in (*consumer.scheduler.iterate(passing), *released):
            if not consumer.flow_active:
                order.drop()
                break
            if consumer.app.consumer_generation_id != generation_id:
                consumer.log.dev("Generation id changed. Cancelling getmany.")
                order.drop()
                break
            if may_deliver(tp):
                track(tp, highwater(tp))
                yield tp, to_message(tp, record)
