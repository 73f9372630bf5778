"""``stream.metrics.BatchHistogram``: a batch of values in one call, exposed exactly as
prometheus_client's own ``Histogram`` of the same buckets exposes them one ``observe`` at a time
(its ``le`` labels too: the latency objective's rules select ``le="1.0"``)."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from stream.metrics import LEDGER_LATENCY_SECONDS, BatchHistogram

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def test_the_exposition_is_the_libraries_histograms() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("t_latency_seconds", "A test.", BUCKETS, registry=ours)
    single = Histogram("t_latency_seconds", "A test.", buckets=BUCKETS, registry=theirs)
    rng = random.Random(7)
    for size in (0, 1, 17, 500):
        values = [rng.choice((0.0, 0.05, 1.0, 300.0, 1e6)) if rng.random() < 0.3 else rng.expovariate(0.5) for _ in range(size)]
        batch.observe_many(values)
        for value in values:
            single.observe(value)
    exposed = [line for line in generate_latest(theirs).decode().splitlines() if "_created" not in line]
    lines = generate_latest(ours).decode().splitlines()
    assert [line for line in lines if "_sum" not in line] == [line for line in exposed if "_sum" not in line]
    sums = [float(line.split()[-1]) for found in (lines, exposed) for line in found if line.startswith("t_latency_seconds_sum")]
    assert len(sums) == 2 and math.isclose(*sums, rel_tol=1e-12)  # the same values, added in another order
    assert 't_latency_seconds_bucket{le="1.0"}' in generate_latest(ours).decode()


def test_the_ledger_latency_keeps_its_buckets() -> None:
    assert LEDGER_LATENCY_SECONDS.bounds == tuple(float(b) for b in BUCKETS)
