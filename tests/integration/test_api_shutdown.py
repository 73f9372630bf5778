"""The balance API's shutdown is bounded (``stream.api_common.shut_down``), against the real
Postgres and broker: each step gets ``SHUTDOWN_STEP_S``, so a SIGTERM stops the process before the
orchestrator's kill even when something does not end. Pins asyncpg's documented behaviour it relies
on: a ``Pool.close()`` cancelled while a connection was never given back terminates the pool."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from stream import api_common

pytestmark = pytest.mark.integration

STEP_S = 0.5


async def _connections_of(server_url: str, name: str) -> int:
    """The server's connections of ``name``, once the server saw those closed go (2 s at most)."""
    connection = await asyncpg.connect(server_url)
    try:
        for _ in range(20):
            count: int = await connection.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name)
            if count == 0:
                break
            await asyncio.sleep(0.1)
        return count
    finally:
        await connection.close()


@pytest.mark.asyncio
async def test_the_stop_ends_though_a_task_ignores_its_cancel_and_a_connection_was_never_given_back(
    kafka_bootstrap: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_common, "SHUTDOWN_STEP_S", STEP_S)
    name = f"api-shutdown-{uuid.uuid4().hex[:8]}"
    pool = await asyncpg.create_pool(postgres_url, min_size=1, max_size=2, server_settings={"application_name": name})
    await pool.acquire()  # never given back, as by a query whose task was cancelled before it gave it back
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    release = asyncio.Event()

    async def stubborn() -> None:  # ends only when told, whatever cancels it
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    try:
        started = time.monotonic()
        stopping = asyncio.ensure_future(api_common.shut_down([task], producer, pool))
        await asyncio.wait({stopping}, timeout=10)  # a test that fails, not one that hangs
        took = time.monotonic() - started
        # Two steps that do not end by themselves, each given the step twice at most (before its
        # cancel, after it); without the bounds the stop waits for the task and the connection for ever.
        assert took < 2 * 2 * STEP_S + 1.0, took
        assert await _connections_of(postgres_url, name) == 0  # the pool terminated its connections
        assert producer._closed  # the producer was stopped all the same (aiokafka sets it once stopped)
        assert not task.done()  # left behind, and said (a warning)
    finally:
        release.set()
        await task
