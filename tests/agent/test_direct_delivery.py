"""The matcher's fetch loop hands a message on without a task of its own when nothing can hold it
(``stream.direct_delivery``), and through Faust's ``wait_first`` otherwise.

The real consumer class of the matcher's app (never started); its fetch loop runs over fake fetched
batches (``getmany``) with a fake conductor callback, as in ``test_guarded_consumer.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP, Message

from stream.direct_delivery import DirectDelivery
from stream.guarded_consumer import GuardedConsumer
from stream.matcher import Matcher
from tests.factories import fetched_message


class Fetcher:
    def __init__(self) -> None:
        self._stopped = asyncio.Event()


@pytest.fixture
def flowing(matcher: Matcher) -> tuple[Any, TP]:
    """The matcher's consumer with its flow running, as between rebalances."""
    app = matcher.app
    app.flow_control.resume()
    app.consumer.resume_flow()
    return app.consumer, TP(matcher.topics.settlements.name, 1)


async def drain(
    consumer: Any,
    tp: TP,
    offsets: list[int],
    on_each: Callable[[int], Any] | None = None,
    loop_of: Any = None,
    *more_fetches: list[int],
) -> list[tuple[int, Any]]:
    """Run a fetch loop (the consumer's, or ``loop_of``'s) over one fetched batch of ``offsets`` (then
    ``more_fetches``, one fetch each). Returns each offset handed on with the task the callback ran in
    (``"the loop's"`` for the loop's own)."""
    handed: list[tuple[int, asyncio.Task[Any] | None]] = []
    fetcher = Fetcher()
    fetches = [offsets, *more_fetches]

    async def callback(received: Message) -> None:
        handed.append((received.offset, asyncio.current_task()))
        if on_each is not None:
            await on_each(received.offset)

    async def getmany(timeout: float):  # type: ignore[no-untyped-def]
        if not fetches:
            fetcher._stopped.set()
            return
        for offset in fetches.pop(0):
            yield tp, fetched_message(tp, offset)

    consumer.callback, consumer.getmany = callback, getmany
    drain_messages = (loop_of or type(consumer))._drain_messages
    loop_task = asyncio.ensure_future(drain_messages(consumer, fetcher))
    await asyncio.wait_for(loop_task, 5)
    return [(offset, "the loop's" if task is loop_task else task) for offset, task in handed]


def test_the_matcher_s_consumer_uses_the_direct_fetch_loop(matcher: Matcher) -> None:
    assert isinstance(matcher.app.consumer, DirectDelivery)
    assert GuardedConsumer._drain_messages is DirectDelivery._drain_messages


@pytest.mark.asyncio
async def test_faust_hands_each_message_on_in_a_task_of_its_own(flowing) -> None:  # type: ignore[no-untyped-def]
    """Pinned library behaviour, the cost the direct loop removes: Faust's loop runs every callback
    inside ``wait_first``, a task of its own (beside three more it waits on)."""
    consumer, tp = flowing
    handed = await drain(consumer, tp, [5, 6, 7], loop_of=FaustConsumer)
    assert [offset for offset, _ in handed] == [5, 6, 7]
    assert all(isinstance(task, asyncio.Task) for _, task in handed)
    assert len({id(task) for _, task in handed}) == 3


@pytest.mark.asyncio
async def test_a_message_nothing_holds_is_handed_on_in_the_loop_s_own_task(flowing) -> None:  # type: ignore[no-untyped-def]
    consumer, tp = flowing
    handed = await drain(consumer, tp, [5, 6, 7])
    assert [offset for offset, _ in handed] == [5, 6, 7]
    assert all(task == "the loop's" for _, task in handed)


@pytest.mark.asyncio
async def test_the_agent_has_a_turn_after_each_message_handed_on_directly(flowing) -> None:  # type: ignore[no-untyped-def]
    """As after Faust's callback task: the agent's stream takes one message a turn, so a loop handing
    on more than one before the agent's next turn filled the agent's queue (measured: a bare agent
    at half Faust's rate, its partitions paused by the queue's pressure)."""
    consumer, tp = flowing
    order: list[str] = []
    done = asyncio.Event()

    async def agent() -> None:
        while not done.is_set():
            order.append("agent")
            await asyncio.sleep(0)

    async def each(offset: int) -> None:
        order.append(f"handed {offset}")

    running = asyncio.ensure_future(agent())
    await drain(consumer, tp, [5, 6, 7], on_each=each)
    done.set()
    await running
    handed_at = [order.index(f"handed {offset}") for offset in (5, 6, 7)]
    assert all(order[at + 1] == "agent" for at in handed_at[:2]), order


@pytest.mark.asyncio
@pytest.mark.parametrize("held_by", ["suspended flow", "flow control", "full queue", "producer buffer", "conductor lock"])
async def test_a_message_something_may_hold_goes_through_faust_s_wait_first(flowing, matcher: Matcher, held_by: str) -> None:  # type: ignore[no-untyped-def]
    consumer, tp = flowing
    app = matcher.app
    if held_by == "suspended flow":
        consumer.suspend_flow.set()
    elif held_by == "flow control":
        app.flow_control.suspend()
    elif held_by == "full queue":  # a channel of the message's topic, its queue full
        channel = matcher.input
        app.topics._tp_index[tp].add(channel)
        while not channel.queue.full():
            channel.queue.put_nowait(None)
    elif held_by == "producer buffer":
        app.producer.buffer.max_messages = -1
    else:
        await app.topics._tp_to_callback_lock.acquire()
    assert not consumer._holds_nothing(tp)
    waited: list[int] = []

    async def wait_first(*coros: Any, **kwargs: Any) -> Any:
        """Faust's, answering once the callback ran: the test's callback never waits."""
        waited.append(len(coros))
        callback, suspended = coros
        suspended.close()
        return await asyncio.ensure_future(callback)

    consumer.wait_first = wait_first
    handed = await drain(consumer, tp, [5])
    assert waited == [2]
    assert [offset for offset, _ in handed] == [5]
    assert all(isinstance(task, asyncio.Task) for _, task in handed)


@pytest.mark.asyncio
async def test_a_callback_held_on_a_full_queue_is_abandoned_when_the_flow_is_suspended(flowing) -> None:  # type: ignore[no-untyped-def]
    """What Faust's ``wait_first`` is for, kept on the path that may wait: a rebalance suspending the flow ends
    the wait of a callback held on a full queue, and the loop goes on."""
    consumer, tp = flowing
    consumer.app.flow_control.suspend()  # something may hold the callback: Faust's wait_first
    never = asyncio.Event()

    async def held(offset: int) -> None:
        await never.wait()  # a full queue never emptied

    async def rebalance_soon() -> None:
        await asyncio.sleep(0.05)
        consumer.suspend_flow.set()

    rebalance = asyncio.ensure_future(rebalance_soon())
    handed = await drain(consumer, tp, [5], on_each=held)
    await rebalance
    assert [offset for offset, _ in handed] == [5]


def test_faust_s_fetch_loop_is_the_one_copied() -> None:
    """``DirectDelivery._drain_messages`` is faust-streaming 0.15's loop with one change: when Faust's
    changes (a fix, a new check), this fails, so the copy is read again beside it and brought in step."""
    source = inspect.getsource(FaustConsumer._drain_messages)
    assert hashlib.sha256(source.encode()).hexdigest() == FAUST_DRAIN_MESSAGES_SHA256


FAUST_DRAIN_MESSAGES_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


@pytest.mark.asyncio
async def test_a_re_read_after_a_seek_back_is_handed_on_directly(flowing) -> None:  # type: ignore[no-untyped-def]
    """The guarded consumer's read positions (``ReadPositions``) hold on the direct path too: a seek back
    from the middle of a fetched batch, and the re-read of the next fetch, are all handed on."""
    consumer, tp = flowing
    handed = await drain(consumer, tp, [10, 11, 12, 13], None, None, [5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
    assert [offset for offset, _ in handed] == [10, 11, 12, 13, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
