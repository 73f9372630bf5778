"""The benchmark's polls of a process's /metrics (stream.localstack.bench_watch): they read the right
samples, and they ask the process for those alone, so that measuring a drain costs the process
measured as little as it can."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from stream.localstack.bench_watch import card_events_decided, sink_counts
from stream.localstack.process import free_port


class CountedCollector:
    """Another metric of the process, which counts how often it is collected (as the process
    collector reads /proc each time)."""

    def __init__(self) -> None:
        self.collected = 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.collected += 1
        yield GaugeMetricFamily("bench_other_gauge", "Another metric of the process.", value=1)


@pytest.fixture
def served() -> Iterator[tuple[int, CollectorRegistry, CountedCollector]]:
    registry, other = CollectorRegistry(), CountedCollector()
    registry.register(other)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield port, registry, other
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_worker_s_poll_reads_its_card_events_alone_and_collects_nothing_else(served) -> None:  # type: ignore[no-untyped-def]
    port, registry, other = served
    decided = Counter("cashback_events_consumed", "Events.", ["event_type", "outcome"], registry=registry)
    decided.labels("AUTHORIZATION", "earned").inc(3)
    decided.labels("CLEARING", "duplicate").inc(2)
    decided.labels("CLOCK_TICK", "applied").inc(5)  # not a card event
    assert card_events_decided(port) == 5
    assert other.collected == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:  # a whole scrape does
        assert b"bench_other_gauge" in response.read()
    assert other.collected == 1


def test_a_sink_s_poll_reads_its_records_and_written_entries_alone(served) -> None:  # type: ignore[no-untyped-def]
    port, registry, other = served
    batches = Histogram("cashback_sink_batch_size", "Records per batch.", registry=registry, buckets=(1, 100))
    entries = Counter("cashback_sink_entries", "Entries.", ["result"], registry=registry)
    batches.observe(40)
    batches.observe(60)
    entries.labels("written").inc(70)
    entries.labels("duplicate").inc(30)
    assert sink_counts(port) == (100, 70)
    assert other.collected == 0


def test_a_process_not_serving_yet_reads_as_nothing() -> None:
    assert card_events_decided(free_port()) == 0
