"""The matcher's input messages: what its agent takes from its queue itself, beside the event
Faust's stream hands it (``take_queued``), and where each was read (``Source``).

Faust's stream hands an agent one event per turn of the event loop (an ``await sleep(0)`` before
each, its iterator's steps around it). While a flush waits on the changelog and the producer, the
fetch loop goes on putting messages in the agent's queue, and the stream then handed them over one
turn at a time. ``take_queued`` takes the next one straight from the queue instead, and gives it
what the stream gives each event (``faust/_cython/streams.pyx``, ``StreamIterator``):

- one fetched before the consumer's latest rebalance, or while the app's flow is stopped, is
  skipped (its partition is read again from the committed offset) and acknowledged, as Faust's
  pure-Python stream does (its Cython one leaves it unacknowledged; which offsets are committed is
  the progress's decision either way: ``stream.guarded_consumer``);
- one of an acking topic is tracked as unacknowledged until the caller acknowledges it;
- it becomes the task's current event, as Faust's own code may ask for it.

The sensors' calls are left out: the worker's app has none (``stream.guarded_consumer``).
``tests/agent/test_matcher_agent.py`` pins each of these.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from faust.streams import _current_event as faust_current_event
from faust.types import EventT


@dataclass(frozen=True, slots=True)
class Source:
    """One input message: where it was read, and its bytes (kept whole for a dead letter)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def take_queued(app: Any, queue: Any) -> EventT | None:
    """The next event waiting in ``queue`` (the agent's stream's channel's) that the stream would
    hand over, or None when it holds none (the module doc)."""
    while not queue.empty():
        event: EventT = queue.get_nowait()  # raises what Faust threw into the queue, as the stream does
        message = event.message
        if not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id:
            event.ack()
            continue
        if not message.tracked and message.topic in app.topics.acking_topics:
            message.tracked = True
            app.consumer.unacked.add(message)
        faust_current_event.set(weakref.ref(event))
        return event
    return None
