"""The benchmark's polls of a process's /metrics (stream.localstack.bench_watch): they read the right
samples, and they ask the process for those alone, so that measuring a drain costs the process
measured as little as it can. And the machine's CPU time read at each poll: how busy the cores were
over a drain's window, from its opening poll to its closing one."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from stream.localstack.bench_watch import Window, busy_between, card_events_decided, cpu_ticks, sink_counts, watch_drain
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


# --- the machine's busy share over a drain window ----------------------------------------------

STAT = """cpu  {user} 10 {system} {idle} {iowait} 3 4 0 0 0
cpu0 1 2 3 4 5 6 7 0 0 0
intr 12345
"""


def _stat(tmp_path: Path, user: int, system: int, idle: int, iowait: int = 0) -> Path:
    path = tmp_path / "stat"
    path.write_text(STAT.format(user=user, system=system, idle=idle, iowait=iowait))
    return path


def test_the_cpu_ticks_are_the_first_line_s_busy_and_whole_time(tmp_path: Path) -> None:
    # user 100, nice 10, system 50, idle 800, iowait 40, irq 3, softirq 4, steal 0: waiting for input or output is idle
    assert cpu_ticks(_stat(tmp_path, 100, 50, 800, 40)) == (167, 1007)
    assert cpu_ticks(tmp_path / "absent") is None
    (tmp_path / "other").write_text("intr 1 2 3\n")
    assert cpu_ticks(tmp_path / "other") is None


def test_the_busy_share_is_the_busy_ticks_over_all_ticks_between_two_readings() -> None:
    assert busy_between((100, 1000), (250, 1200)) == 0.75
    assert busy_between(None, (250, 1200)) is None
    assert busy_between((100, 1000), (100, 1000)) is None  # no time between: no share


def test_a_window_s_busy_share_runs_from_its_opening_poll_to_its_closing_one() -> None:
    """The window opens at the last poll before every process counted something: the machine's busy
    share is read between that poll and the closing one, not from the watch's start (the workers'
    start-up is not in it), and each process's count at the close is kept."""
    readings = iter([([0.0, 0.0], (10, 200)), ([5.0, 0.0], (30, 300)), ([40.0, 30.0], (220, 500)), ([60.0, 40.0], (410, 700))])
    latest: list[tuple[int, int]] = [(0, 100)]

    def counts() -> list[float]:
        found, ticks = next(readings)
        latest[0] = ticks
        return found

    window = watch_drain(counts, 100, lambda: None, "a drain", cpu=lambda: latest[0])
    # opened at the poll before both had counted ((30, 300): the second process counted nothing there)
    assert window.counted == 100 - 5.0
    assert window.cores_busy == (410 - 30) / (700 - 300)
    assert window.counts == (60.0, 40.0) and window.shares == [0.6, 0.4]


def test_phases_join_into_one_window_their_shares_weighted_by_length() -> None:
    first = Window(100, 10.0, cores_busy=0.5, counts=(60.0, 40.0))
    second = Window(50, 30.0, cores_busy=0.9, counts=(20.0, 30.0))
    joined = Window.joined([first, second])
    assert (joined.counted, joined.seconds, joined.counts) == (150, 40.0, (80.0, 70.0))
    assert joined.cores_busy == pytest.approx((0.5 * 10 + 0.9 * 30) / 40)
    assert Window.joined([first, Window(50, 30.0)]).cores_busy is None  # one phase not known: not known
