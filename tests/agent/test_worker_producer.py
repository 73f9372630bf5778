"""The worker's producer as Faust builds it: what it gathers into one produce request
(``stream.worker_app.PRODUCER_LINGER_S`` and ``PRODUCER_BATCH_BYTES``), pinned on the aiokafka
producer Faust makes, since Faust passes its settings under other names and units."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.codec import Codec
from stream.matcher import Matcher
from stream.settings import Settings
from stream.worker_app import PRODUCER_BATCH_BYTES, PRODUCER_LINGER_S


@pytest.mark.asyncio
async def test_the_workers_producer_gathers_a_flush_into_large_batches(settings: Settings, codec: Codec) -> None:
    producer: Any = Matcher(settings, codec).app.producer
    client = producer._new_producer()  # the aiokafka producer Faust would start (not started here)
    try:
        accumulator = client._message_accumulator
        assert accumulator._linger_time == pytest.approx(PRODUCER_LINGER_S) == pytest.approx(0.005)
        assert accumulator._batch_size == PRODUCER_BATCH_BYTES == 256 * 1024
    finally:
        await client.stop()


@pytest.mark.asyncio
async def test_the_worker_runs_no_faust_monitor_sensor_but_keeps_the_monitor(settings: Settings, codec: Codec) -> None:
    """Faust calls every sensor four times a message; the worker's app drops Faust's Monitor from
    them (``GuardedApp.on_init_dependencies``) and keeps it as ``app.monitor``, which Faust's
    consumer still tells of offsets and commits."""
    app: Any = Matcher(settings, codec).app
    list(app.on_init_dependencies())  # what Faust does as the app starts
    assert app.monitor not in set(app.sensors)
    assert app.sensors.on_stream_event_in(None, 0, None, None) == {}  # no sensor is called for a message
    app.monitor.on_tp_commit({})  # still there for the consumer
