"""Faust's fetch loop, handing a fetched message on without a task of its own when nothing can hold it.

Faust's consumer (``Consumer._drain_messages``, faust-streaming 0.15) hands each fetched message to
the conductor inside ``wait_first(callback(message), suspend_flow.wait())``: four tasks a message
(the callback, the flow's suspension, the consumer's stop and crash), an ``asyncio.wait`` and the
cancellation of the three losers, so that a rebalance suspending the flow abandons a callback held
on a full queue. The callback only waits when something holds it: the app's flow control suspended,
the producer's buffer over its limit, the conductor's index being rebuilt, or the queue of a channel
of the message's topic full. When none of these holds, it runs to its end without waiting, and the
tasks are pure cost: about half of what Faust's delivery costs a message (the rest is the agent's
stream), and that delivery alone held a bare agent to about a fifth of a plain client's rate.

So ``DirectDelivery._drain_messages`` is Faust's loop with one change: it awaits the callback
directly when none of those holds (``_holds_nothing``, checked just before, with no turn of the
event loop between), and through ``wait_first`` as Faust does otherwise. Since a direct callback
never yields, the loop hands on up to Faust's ``yield_every`` (100) messages before the agent's
next turn, where ``wait_first`` gave the agent a turn after each message: the agent finds more in
its queue and its batches fill sooner (``stream.matcher``). ``tests/agent/test_direct_delivery.py``
pins both paths and what the loop shares with Faust's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import TP
from mode import Service, ServiceT


class DirectDelivery:
    """A mixin for Faust's consumer (before it in the bases): its fetch loop (module doc)."""

    def _holds_nothing(self, tp: TP) -> bool:
        """Whether the conductor's callback can hand on a message of ``tp`` without waiting."""
        consumer: Any = self
        app = consumer.app
        if consumer.suspend_flow.is_set() or not app.flow_control.is_active():
            return False
        buffer = app.producer.buffer
        if buffer.size > buffer.max_messages:
            return False
        conductor = app.topics
        if conductor._tp_to_callback_lock.locked():
            return False
        for channel in conductor._tp_index.get(tp, ()):
            if channel.queue.full():
                return False
        return True

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        # Faust's Consumer._drain_messages, the direct callback aside (module doc).
        consumer = cast(Any, self)
        callback = consumer.callback
        getmany = consumer.getmany
        consumer_should_stop = cast(Service, consumer)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        get_read_offset = consumer._read_offset.__getitem__
        set_read_offset = consumer._read_offset.__setitem__
        set_flag, unset_flag = consumer.diag.set_flag, consumer.diag.unset_flag
        commit_every = consumer._commit_every
        acks_enabled_for = consumer.app.topics.acks_enabled_for
        holds_nothing = self._holds_nothing
        yield_every, num_since_yield = 100, 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = cast(AsyncIterator, getmany(timeout=1.0))
                await consumer.sleep(0)  # getmany may return at once, again and again
                if not consumer.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await asyncio.sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await consumer._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and consumer._n_acked >= commit_every:
                                consumer._n_acked = 0
                                await consumer.commit()
                            if holds_nothing(tp):
                                await callback(message)
                                await asyncio.sleep(0)  # the agent's turn, as after a callback task
                            else:
                                await consumer.wait_first(callback(message), consumer.suspend_flow.wait())
                            set_read_offset(tp, offset)
                    unset_flag(CONSUMER_FETCHING)
        except consumer.consumer_stopped_errors:
            if consumer.transport.app.should_stop:
                consumer.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if consumer.transport.app.should_stop:
                consumer.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            consumer.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)
