"""A Faust behaviour the matcher's delivery guarantee rests on, pinned against the installed Faust.

At-least-once: the matcher (whose consumer commits the offsets ``stream.progress`` says are
accounted for, ``stream.guarded_consumer``) hands its accruals and dead letters to the producer with
``send(force=True)`` and the table queues its changelog writes in the producer's buffer; none of
them is awaited per event. That is only safe because Faust, before it commits the input offsets
(outside a Kafka transaction, our ``processing_guarantee="at_least_once"``), awaits
``app.producer.flush()`` (``Consumer._commit_offsets`` in ``faust/transport/consumer.py``). So an
offset is never committed for an event whose outputs might still be lost in a crash: the worst
case is a redelivery, which the state's seen-events make harmless.

If a Faust upgrade stops flushing first (or commits while the flush is still running, or commits
although it failed), this test fails, and the matcher must await its sends instead.

The consumer is Faust's real aiokafka consumer of the matcher's app, never started; only its
lowest layer (``_commit``: the call to the broker) and the producer are fakes that record the
order of events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from faust.types import TP

from stream.matcher import Matcher
from tests.factories import fetched_message


class RecordingProducer:
    """Only what the commit path uses of a producer: ``flush``, which takes a while."""

    def __init__(self, calls: list[object], fail: bool = False) -> None:
        self.calls = calls
        self.fail = fail

    async def flush(self) -> None:
        self.calls.append("flush started")
        await asyncio.sleep(0.01)  # a real flush waits for the broker's acks
        if self.fail:
            self.calls.append("flush failed")
            raise ConnectionError("broker unreachable")
        self.calls.append("flush done")


@pytest.mark.asyncio
async def test_consumer_flushes_the_producer_before_committing_offsets(matcher: Matcher) -> None:
    app = matcher.app
    assert app.conf.processing_guarantee.value == "at_least_once"
    calls: list[object] = []
    consumer = app.consumer
    assert not consumer.in_transaction
    tp = TP(matcher.topics.authorizations.name, 2)
    consumer.assignment = lambda: {tp}  # type: ignore[method-assign]

    async def commit_to_broker(offsets: Mapping[TP, int]) -> bool:
        calls.append(("commit", dict(offsets)))
        return True

    consumer._commit = commit_to_broker  # type: ignore[method-assign]
    # The conductor learns which topics are acked (our input topic is) as the worker subscribes.
    app.topics.add(matcher.input)
    await app.topics._update_indices()

    app.progress.start(tp, 41)

    def processed(offset: int) -> bool:
        # What the agent does: the offset is the next one, its effects are handed to the producer.
        message = fetched_message(tp, offset)
        consumer.ack(message)  # Faust's own ack, as its stream does; not what decides the commit
        app.progress.verdict(tp, offset)
        app.progress.done(tp, offset)
        return True

    # A flush that fails: the offset is not committed (the event will be redelivered).
    app.producer = RecordingProducer(calls, fail=True)
    assert processed(41)
    with pytest.raises(ConnectionError):
        await consumer.commit()
    assert calls == ["flush started", "flush failed"]

    # A flush that succeeds: the commit comes after it has finished, with the next offset to read.
    calls.clear()
    app.producer = RecordingProducer(calls)
    assert processed(42)
    assert await consumer.commit()
    assert calls == ["flush started", "flush done", ("commit", {tp: 43})]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("key", "value"), [(b"acct-1", b"\x00\x00\x00\x00\x01avro"), (b"acct-1", None), (None, b""), (None, None)]
)
async def test_the_input_topics_events_hold_what_fausts_raw_schema_gives(
    matcher: Matcher, key: bytes | None, value: bytes | None
) -> None:
    """The input topics' schema (``stream.worker_app.INPUT_SCHEMA``) takes an event's key and value
    straight from its message, skipping Faust's serializer registry: the same event as Faust's own
    raw schema makes, a tombstone and a missing key included."""
    import faust

    from stream.worker_app import INPUT_SCHEMA

    assert matcher.input.schema is INPUT_SCHEMA
    message = fetched_message(TP("cashback.card.authorizations", 0), 7)
    message.key, message.value = key, value
    raw = faust.Schema(key_serializer="raw", value_serializer="raw")
    ours, fausts = INPUT_SCHEMA.compile(matcher.app), raw.compile(matcher.app)
    made, expected = await ours(message, propagate=True), await fausts(message, propagate=True)
    assert (made.key, made.value, made.message) == (expected.key, expected.value, expected.message) == (key, value, message)
