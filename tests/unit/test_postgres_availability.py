"""Waiting for Postgres (``stream.store.availability``): an outage blocks the work and loses
nothing, but a process asked to stop meanwhile stops waiting at once (``StopRequested``), and an
attempt Postgres answers is never cut short by a stop. The payout answers' reader is wired to it.

No Postgres here: an outage is a port nothing listens on."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime
from functools import partial

import asyncpg
import pytest
from aiokafka import ConsumerRecord

from schemas.codec import Codec
from stream.payout_answers import PayoutAnswers
from stream.settings import Settings
from stream.store import availability
from stream.store.availability import StopRequested, until_postgres_answers
from topics.catalogue import catalogue


def closed_port() -> int:
    """A local port nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_outage_is_waited_out_when_no_stop_is_asked() -> None:
    calls: list[float] = []

    async def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise ConnectionRefusedError
        return "written"

    assert asyncio.run(until_postgres_answers(flaky, "a test", stopping=asyncio.Event())) == "written"
    assert len(calls) == 4
    assert calls[-1] - calls[0] >= availability.FIRST_DELAY_S * (1 + 2 + 4) * 0.9  # backed off between attempts


@pytest.mark.parametrize(
    "short",
    [asyncpg.exceptions.DiskFullError, asyncpg.exceptions.OutOfMemoryError, asyncpg.exceptions.TooManyConnectionsError],
)
def test_postgres_short_of_a_resource_is_waited_out_not_taken_for_a_refusal(short: type[Exception]) -> None:
    """Its disk full (53100), out of memory (53200), too many connections (53300), or an I/O error of its own
    (58030): Postgres cannot do the work now, and may once an operator made room."""
    for error in (short("no room"), asyncpg.exceptions.PostgresIOError("could not write block")):
        calls: list[int] = []
        waited = until_postgres_answers(partial(_refused_twice, error, calls), "a test", stopping=asyncio.Event())
        assert asyncio.run(waited) == "written"
        assert len(calls) == 3


async def _refused_twice(error: Exception, calls: list[int]) -> str:
    calls.append(1)
    if len(calls) < 3:
        raise error
    return "written"


def test_a_refusal_is_not_waited_out() -> None:
    calls: list[int] = []

    async def refused() -> None:
        calls.append(1)
        raise asyncpg.exceptions.CheckViolationError("balance below zero")

    with pytest.raises(asyncpg.exceptions.CheckViolationError):
        asyncio.run(until_postgres_answers(refused, "a test", stopping=asyncio.Event()))
    assert calls == [1]


def test_a_stop_during_an_outage_ends_the_wait_at_once() -> None:
    async def scenario() -> tuple[float, int]:
        stopping, calls = asyncio.Event(), []

        async def down() -> None:
            calls.append(1)
            raise ConnectionRefusedError

        waiting = asyncio.create_task(until_postgres_answers(down, "a test", stopping=stopping))
        await asyncio.sleep(1.0)  # in its back-off, several attempts made
        assert not waiting.done(), "an outage blocks the work, never skips it"
        made = len(calls)
        asked = time.monotonic()
        stopping.set()
        with pytest.raises(StopRequested, match="a test"):
            await asyncio.wait_for(waiting, 2.0)
        return time.monotonic() - asked, len(calls) - made

    took, more = asyncio.run(scenario())
    assert took < 0.2, "the back-off's sleep is cut short by the stop"
    assert more == 0, "no attempt after the stop"


def test_a_stop_never_cuts_short_an_attempt_postgres_answers() -> None:
    async def scenario() -> str:
        stopping = asyncio.Event()

        async def slow_write() -> str:
            stopping.set()  # the stop arrives while the write is running
            await asyncio.sleep(0.2)
            return "written"

        return await until_postgres_answers(slow_write, "a test", stopping=stopping)

    assert asyncio.run(scenario()) == "written"


def test_a_stop_asked_before_a_failed_attempt_does_not_retry_it() -> None:
    async def scenario() -> int:
        stopping, calls = asyncio.Event(), []
        stopping.set()

        async def down() -> None:
            calls.append(1)
            raise OSError("unreachable")

        with pytest.raises(StopRequested):
            await until_postgres_answers(down, "a test", stopping=stopping)
        return len(calls)

    assert asyncio.run(scenario()) == 1


def test_the_payout_answers_stop_waiting_for_postgres_when_stopped() -> None:
    codec = Codec()
    topics = catalogue()
    settings = Settings.from_env({"DATABASE_URL": f"postgresql://cashback@127.0.0.1:{closed_port()}/cashback"})
    answers = PayoutAnswers(settings, topics, codec)
    record = {
        "payout_id": "p:run-1:acct-1:EUR",
        "account_id": "acct-1",
        "status": "CONFIRMED",
        "reason_code": None,
        "answered_at": datetime.now(UTC),
    }
    value = codec.encode("payout_result", record)
    message = ConsumerRecord(topics.payout_results.name, 0, 0, 0, 0, b"acct-1", value, None, 0, len(value), [])

    async def scenario() -> float:
        handling = asyncio.create_task(answers.handle([message], producer=None))  # type: ignore[arg-type]  # nothing to dead-letter
        await asyncio.sleep(0.8)
        assert not handling.done(), "the answer waits for Postgres"
        asked = time.monotonic()
        answers.stop()
        with pytest.raises(StopRequested):
            await asyncio.wait_for(handling, 5.0)
        return time.monotonic() - asked

    assert asyncio.run(scenario()) < 1.0
