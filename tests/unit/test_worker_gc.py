"""The worker's garbage-collector thresholds (``stream.composition.WORKER_GC_THRESHOLD``): pinned on
CPython's scheduling of collections, which the setting relies on. A process that keeps many objects
alive and makes many short-lived containers (a worker with its cached states, deciding messages)
runs far fewer collections of the older generations, and none of everything, over the same work."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def collections_counted(threshold: tuple[int, int, int]) -> Iterator[list[int]]:
    counts = [0, 0, 0]

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            counts[info["generation"]] += 1

    before = gc.get_threshold()
    gc.collect()
    gc.set_threshold(*threshold)
    gc.callbacks.append(count)
    try:
        yield counts
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*before)


def work(kept: list[object], messages: int) -> None:
    """What a worker does in miniature: long-lived states grow, each message makes short-lived dicts."""
    for number in range(messages):
        record = {"event_id": number, "explanation": {"basis": number}, "shares": [{"amount": number}]}
        if number % 2 == 0:
            kept.append([record["explanation"]])


def _counts(threshold: tuple[int, int, int]) -> list[int]:
    baseline: list[object] = [[index] for index in range(200_000)]
    with collections_counted(threshold) as counted:
        work(list(baseline), 300_000)
    return counted


def test_the_worker_threshold_spares_the_collector_its_passes_over_what_the_worker_keeps() -> None:
    # In a fresh interpreter: CPython passes over everything only once the objects kept since the last such pass
    # reach a quarter of those it found then, so in this test process the count would depend on every test before.
    script = (
        "import json, sys; sys.path[:0] = [sys.argv[1]]; from tests.unit.test_worker_gc import _counts; "
        "from stream.composition import WORKER_GC_THRESHOLD; "
        "print(json.dumps([_counts((700, 10, 10)), _counts(WORKER_GC_THRESHOLD)]))"
    )
    root = str(Path(__file__).resolve().parents[2])
    run = subprocess.run([sys.executable, "-c", script, root], capture_output=True, text=True, timeout=120, check=True)
    default, tuned = json.loads(run.stdout)
    assert default[0] >= 10 * tuned[0] > 0  # young collections: about one per 700 containers, then 10,000
    assert default[2] >= 1 and tuned[2] == 0  # a pass over everything kept: none with the worker's setting
