"""Handing the memory a process freed back to the system: glibc's ``malloc_trim``, and large
blocks mapped apart (``mallopt(M_MMAP_THRESHOLD)``).

The worker's caches are bounded (the account states, ``WORKER_STATE_CACHE_MB``; the profiles;
the local stores' shared budget), but once full they churn: states leave, others are read back from
the store, fetched batches and encoded rows come and go. glibc hands freed memory back to the system
by itself only from the top of its heaps, so pages freed anywhere below stay in the process's RSS
until it reuses them. ``malloc_trim(0)`` releases every whole free page wherever it lies
(``madvise``), in every arena, without moving anything. The worker calls it every
``TRIM_INTERVAL_S`` (``stream.matcher``). On a long drain of the benchmark's log it took 0.4 to
1.6 ms and released 2 to 18 MiB each time (README, Performance).

Python's own small objects live in its arenas, which it returns once empty: a trim does not touch
them. On a C library without ``malloc_trim`` (musl, macOS) ``trimmer`` is None and nothing is done.

Large blocks (fetched record batches, the producer's batches, RocksDB's memtable blocks) are mapped
apart from the heap and unmapped the moment they are freed, but glibc does so by default only until
the first of them is freed: it then raises its mmap threshold to that block's size (up to 32 MiB),
and every later block below it comes from the heap, where it is carved between small blocks and
stays. On the benchmark's long drain the heap grew from 58 to 216 MiB while the mapped blocks fell
from 115 to 8 MiB, and the worker's RSS kept climbing after its caches were full.
``map_large_blocks_apart`` fixes the threshold at ``MMAP_THRESHOLD_BYTES`` (glibc's initial value),
which also ends its adjustment, so a freed large block leaves the RSS at once (README, Performance).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Any

TRIM_INTERVAL_S = 30.0
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial M_MMAP_THRESHOLD, made fixed
_M_MMAP_THRESHOLD = -3  # mallopt's parameter (<malloc.h>)


def _libc_function(name: str, argtypes: list[Any], restype: Any) -> Any | None:
    """The C library's function ``name``, typed (None: no C library found, or none of that name)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        function = getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, restype
    return function


def trimmer() -> Callable[[], bool] | None:
    """A function that trims the heap (True: glibc released memory), or None where the C library
    has no ``malloc_trim``."""
    trim = _libc_function("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
    if trim is None:
        return None

    def trim_heap() -> bool:
        return bool(trim(0))  # 0: keep no free space at the top of the heap either

    return trim_heap


def map_large_blocks_apart(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Have glibc map every block of ``threshold`` bytes or more apart from the heap, for the rest of
    the process, and unmap it when freed (True: done; False: a C library without ``mallopt``)."""
    mallopt = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, threshold))
