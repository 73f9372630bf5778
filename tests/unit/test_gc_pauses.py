"""``cashback_gc_pause_seconds`` (``stream.metrics.GcPauses``): every collection of the interpreter
counted by generation, exposed as a histogram at scrape time, with no metric lock taken inside the
collector's callback."""

from __future__ import annotations

import bisect
import gc
import threading

from prometheus_client import REGISTRY, generate_latest

from stream import metrics


def _count(generation: str) -> float:
    return REGISTRY.get_sample_value("cashback_gc_pause_seconds_count", {"generation": generation}) or 0.0


def test_each_collection_is_counted_under_its_generation_once_observed() -> None:
    metrics.observe_gc_pauses()
    metrics.observe_gc_pauses()  # once per process, however often asked
    assert gc.callbacks.count(metrics.GC_PAUSES.on_collection) == 1
    before = [_count(g) for g in ("0", "1", "2")]
    gc.collect(2)
    gc.collect(0)
    after = [_count(g) for g in ("0", "1", "2")]
    assert after[2] >= before[2] + 1 and after[0] >= before[0] + 1
    total = REGISTRY.get_sample_value("cashback_gc_pause_seconds_bucket", {"generation": "2", "le": "+Inf"})
    assert total == after[2]
    assert (REGISTRY.get_sample_value("cashback_gc_pause_seconds_sum", {"generation": "2"}) or 0.0) > 0.0


def test_buckets_are_cumulative_and_end_at_the_count() -> None:
    pauses = metrics.GcPauses()
    for seconds in (0.0005, 0.02, 0.3, 5.0):
        pauses.buckets[2][bisect.bisect_left(metrics.GC_PAUSE_BUCKETS, seconds)] += 1
    [family] = list(pauses.collect())
    full = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket") and s.labels["generation"] == "2"}
    assert (full["0.001"], full["0.025"], full["0.5"], full["2.5"], full["+Inf"]) == (1, 2, 3, 3, 4)


def test_a_collection_while_this_thread_holds_metric_locks_finishes() -> None:
    """The failure mode of a metric observed in a gc callback: a collection starts (at any
    allocation) while the same thread holds a metric's lock, and the callback waits for it forever.
    Here the thread holds the registry's lock and a histogram value's while it collects."""
    metrics.observe_gc_pauses()
    value_lock = metrics.WORKER_FLUSH_SECONDS._sum._lock  # a Histogram's value, as a scrape or an observe holds it
    finished = threading.Event()

    def collect_holding_locks() -> None:
        with REGISTRY._lock, value_lock:
            gc.collect(0)
            gc.collect(2)
        finished.set()

    thread = threading.Thread(target=collect_holding_locks, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert finished.is_set()
    assert "cashback_gc_pause_seconds_bucket" in generate_latest(REGISTRY).decode()
