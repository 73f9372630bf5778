"""The worker's stop bounded while the broker is away (``stream.worker_stop``, and the plain
consumers' ``stream.kafka_clients.stop_consumer``): each piece alone, and what it relies on in
aiokafka's private API. The whole stop against a real broker taken away is
``tests/integration/test_outages.py``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.transport.drivers import aiokafka as faust_aiokafka

from stream import stopping, worker_stop
from stream.guarded_consumer import GuardedApp
from stream.kafka_clients import stop_consumer
from stream.worker_stop import BoundedLastCommit, StoppingConsumerThread, _close_undelivered, flush_within

CLOSED = "127.0.0.1:9"  # nothing listens: no client here connects anywhere


class Recorded:
    def __init__(self) -> None:
        self.closed = 0

    async def close(self) -> None:
        self.closed += 1


def thread_whose_consumer_stop_raises(monkeypatch: pytest.MonkeyPatch) -> tuple[StoppingConsumerThread, Recorded]:
    """A consumer thread whose consumer's stop raised ``CancelledError`` (aiokafka #647), made without
    Faust's consumer around it: only what ``on_thread_stop`` reads."""

    async def stop_raising(self: Any) -> None:
        raise asyncio.CancelledError

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "on_thread_stop", stop_raising)
    thread = object.__new__(StoppingConsumerThread)
    client = Recorded()
    thread._consumer = type("Consumer", (), {"_client": client})()  # type: ignore[assignment]
    return thread, client


def test_a_consumer_stop_cut_short_by_a_cancelled_fetch_ends_the_thread_s_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    thread, client = thread_whose_consumer_stop_raises(monkeypatch)
    asyncio.run(thread.on_thread_stop())  # no CancelledError: the thread goes on to tell the app it stopped
    assert client.closed == 1, "the consumer's connections are closed instead"


def test_a_thread_stop_itself_cancelled_is_still_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    thread, _ = thread_whose_consumer_stop_raises(monkeypatch)

    async def scenario() -> None:
        async def stop_then_cancelled() -> None:
            asyncio.current_task().cancel()  # type: ignore[union-attr]  # a cancel asked of this very stop
            await thread.on_thread_stop()

        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(stop_then_cancelled())

    asyncio.run(scenario())


def test_the_last_commit_is_given_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_stop, "STOP_COMMIT_S", 0.2)

    class Committing:
        async def on_stop(self) -> None:
            await asyncio.sleep(3600)  # a commit asking for a coordinator that never answers

    class Consumer(BoundedLastCommit, Committing):
        pass

    started = time.monotonic()
    asyncio.run(Consumer().on_stop())
    assert time.monotonic() - started < 0.2 + stopping.CANCEL_GRACE_S + 0.5


def test_the_flush_before_a_stop_is_given_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_stop, "STOP_FLUSH_S", 0.2)
    started = time.monotonic()
    asyncio.run(flush_within(asyncio.sleep(3600)))
    assert time.monotonic() - started < 0.2 + stopping.CANCEL_GRACE_S + 0.5


def test_a_step_that_ignores_its_cancel_is_left_behind_after_the_grace() -> None:
    async def scenario() -> tuple[bool, float]:
        release = asyncio.Event()

        async def stubborn() -> None:
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    continue  # ignores its cancel until released

        started = time.monotonic()
        ended = await stopping.within("a stubborn step", stubborn(), 0.2)
        took = time.monotonic() - started
        done = ended.done()
        release.set()
        await ended
        return done, took

    done, took = asyncio.run(scenario())
    assert not done
    assert took < 0.2 + stopping.CANCEL_GRACE_S + 0.5


def test_aiokafka_s_private_parts_the_stop_closes_are_there() -> None:
    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=CLOSED)
        await _close_undelivered(producer)  # its sender and client, as AIOKafkaProducer.stop closes them
        consumer = AIOKafkaConsumer(bootstrap_servers=CLOSED)
        await consumer._client.close()  # what StoppingConsumerThread and stop_consumer close
        await consumer.stop()  # (marked closed, so that it does not warn)
        await producer.stop()

    asyncio.run(scenario())


def test_the_app_s_flush_is_bounded_at_a_stop_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """At a stop the flush gives up; when partitions are revoked it waits for the broker, or a table
    change could reach the changelog after the next owner's."""
    monkeypatch.setattr(worker_stop, "STOP_FLUSH_S", 0.2)

    async def slow_flush(self: Any, logger: Any) -> None:
        await asyncio.sleep(1.5)  # a broker slow to acknowledge

    monkeypatch.setattr(faust.App, "_producer_flush", slow_flush)

    async def flush_took(stopping: bool) -> float:
        app = object.__new__(GuardedApp)  # only what _producer_flush reads: whether it is stopping
        app._stopped, app._crashed = asyncio.Event(), asyncio.Event()  # type: ignore[misc]
        if stopping:
            app._stopped.set()
        started = time.monotonic()
        await app._producer_flush(None)
        return time.monotonic() - started

    assert asyncio.run(flush_took(stopping=False)) >= 1.5
    assert asyncio.run(flush_took(stopping=True)) < 1.0


class StopRaising:
    """A consumer whose stop raised ``CancelledError`` (aiokafka #647), as the sink's and the payout
    answers' plain aiokafka consumers' do while the broker is away."""

    def __init__(self) -> None:
        self._client = Recorded()

    async def stop(self) -> None:
        raise asyncio.CancelledError


def test_a_plain_consumer_s_stop_cut_short_lets_its_owner_go_on_with_its_cleanup() -> None:
    consumer = StopRaising()
    asyncio.run(stop_consumer(consumer))  # no CancelledError: the sink goes on to stop its producer and close Postgres
    assert consumer._client.closed == 1, "the consumer's connections are closed instead"

    async def scenario() -> None:
        async def stop_then_cancelled() -> None:
            asyncio.current_task().cancel()  # type: ignore[union-attr]  # a cancel asked of the owner itself
            await stop_consumer(StopRaising())

        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(stop_then_cancelled())

    asyncio.run(scenario())


def test_an_agent_s_failure_ends_the_worker_with_its_code_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    """The worker's exit when its agent raised (wired in through the consumer's ``on_task_error``: the
    real worker's exit and restart are ``tests/integration/test_restart.py``)."""
    exits: list[int] = []
    with caplog.at_level("CRITICAL", logger="stream.stopping"):
        stopping.agent_failed(RuntimeError("boom"), exit=exits.append)
    assert exits == [stopping.EXIT_AGENT_FAILED] == [70]
    (record,) = caplog.records
    assert record.levelname == "CRITICAL" and "the matcher agent failed (RuntimeError)" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1].args == ("boom",)


async def _cancelled_under(waiting: asyncio.Future[None]) -> None:
    """What an agent's function does when a future it awaits is cancelled by someone else."""
    asyncio.get_running_loop().call_soon(waiting.cancel)
    await waiting


def test_a_cancel_the_agent_s_task_was_not_asked_for_is_a_failure() -> None:
    async def scenario() -> None:
        guarded = stopping.cancel_is_failure(_cancelled_under)
        with pytest.raises(stopping.StrayCancel) as raised:
            await guarded(asyncio.get_running_loop().create_future())
        assert isinstance(raised.value.__cause__, asyncio.CancelledError)

    asyncio.run(scenario())


def test_a_stop_s_cancel_of_the_agent_s_task_stays_a_cancel() -> None:
    """Faust stops an agent by cancelling its task: that is not a failure, the worker stops as asked."""

    async def forever(_: object) -> None:
        await asyncio.Event().wait()

    async def scenario() -> None:
        task = asyncio.create_task(stopping.cancel_is_failure(forever)(None))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


@pytest.mark.parametrize("guarded", [False, True])
def test_faust_calls_the_agent_s_error_handler_for_a_stray_cancel_only_once_it_is_a_failure(guarded: bool) -> None:
    """Faust's ``Agent._execute_actor`` as the guard relies on: a ``CancelledError`` ending the agent while
    it is not stopping is taken for a rebalance, the agent crashed and started again, its error handler
    (the worker's exit) not called; a ``StrayCancel`` goes to the error handler first."""
    app = faust.App("stray-cancel", broker=f"kafka://{CLOSED}", store="memory://")
    handled: list[BaseException] = []
    crashed: list[BaseException] = []

    async def on_error(agent: Any, exc: BaseException) -> None:
        handled.append(exc)

    function = stopping.cancel_is_failure(_cancelled_under) if guarded else _cancelled_under
    agent = app.agent(app.topic("stray-cancel"), name="stray")(function)
    agent._on_error = on_error  # the app's: the consumer's on_task_error, the worker's exit

    async def scenario() -> None:
        class Ref:
            async def crash(self, exc: BaseException) -> None:
                crashed.append(exc)

        agent.supervisor = type("Supervisor", (), {"wakeup": lambda self: None})()  # type: ignore[assignment]
        await agent._execute_actor(function(asyncio.get_running_loop().create_future()), Ref())  # type: ignore[arg-type]

    asyncio.run(scenario())
    assert len(crashed) == 1
    if guarded:
        assert [type(e) for e in handled] == [stopping.StrayCancel]
    else:
        assert handled == [] and isinstance(crashed[0], asyncio.CancelledError)
