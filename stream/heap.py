"""Handing the memory a process freed back to the system: glibc's ``malloc_trim``.

The worker's caches are bounded (the account states, ``WORKER_STATE_CACHE_ITEMS``; the profiles;
the local stores' shared budget), but once full they churn: states leave, others are read back from
the store, fetched batches and encoded rows come and go. glibc hands freed memory back to the system
by itself only from the top of its heaps, so pages freed anywhere below stay in the process's RSS
until it reuses them. ``malloc_trim(0)`` releases every whole free page wherever it lies
(``madvise``), in every arena, without moving anything. The worker calls it every
``TRIM_INTERVAL_S`` (``stream.matcher``). On a long drain of the benchmark's log it took 0.4 to
1.6 ms and released 2 to 18 MiB each time (README, Performance).

Python's own small objects live in its arenas, which it returns once empty: a trim does not touch
them. On a C library without ``malloc_trim`` (musl, macOS) ``trimmer`` is None and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_INTERVAL_S = 30.0


def trimmer() -> Callable[[], bool] | None:
    """A function that trims the heap (True: glibc released memory), or None where the C library
    has no ``malloc_trim``."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def trim_heap() -> bool:
        return bool(trim(0))  # 0: keep no free space at the top of the heap either

    return trim_heap
