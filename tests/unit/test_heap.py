"""The glibc behaviour the worker's heap handling relies on (stream.heap), pinned in fresh interpreters:
memory freed below the top of the heap stays resident, and ``malloc_trim(0)`` gives it back; a large
block comes from the heap once a larger one was freed, unless the mmap threshold was fixed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from stream.heap import MMAP_THRESHOLD_BYTES, trimmer

ROOT = Path(__file__).resolve().parents[2]

_EXPERIMENT = """
import json, os
from stream.heap import trimmer

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

trim = trimmer()
blocks = [bytes(8192) for _ in range(8192)]  # 64 MiB from glibc's heap (above Python's small objects)
full = rss()
kept = blocks[::16]  # one block in sixteen stays: the freed ones lie between live ones, not at the top
del blocks
freed = rss()
released = trim()
trimmed = rss()
print(json.dumps({"full": full, "freed": freed, "trimmed": trimmed, "released": released, "kept": len(kept)}))
"""


def test_glibc_keeps_memory_freed_below_the_top_until_trimmed() -> None:
    assert trimmer() is not None, "this Linux's C library has no malloc_trim: the worker would never trim"
    out = subprocess.run([sys.executable, "-c", _EXPERIMENT], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    sizes = json.loads(out)
    freed_bytes = 8192 * 8192 * 15 // 16
    # glibc returned little of it by itself: the pages lie between blocks still in use
    assert sizes["full"] - sizes["freed"] < freed_bytes // 4, sizes
    # the trim returned most of it
    assert sizes["released"] is True, sizes
    assert sizes["freed"] - sizes["trimmed"] > freed_bytes // 2, sizes


_LARGE_BLOCKS = """
import ctypes, json, sys
from stream.heap import map_large_blocks_apart

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
fixed = map_large_blocks_apart() if sys.argv[1] == "fixed" else None
big = bytes(4 << 20)  # mapped apart (above the initial threshold), then freed
del big
before = libc.mallinfo2()
block = bytes(1 << 20)  # a fetched batch's size
during = libc.mallinfo2()
del block
after = libc.mallinfo2()
print(json.dumps({"fixed": fixed, "mapped_during": during.hblkhd - before.hblkhd, "mapped_after": after.hblkhd - before.hblkhd}))
"""


def _large_block(mode: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", _LARGE_BLOCKS, mode], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out)


def test_glibc_takes_large_blocks_from_the_heap_once_a_larger_one_was_freed() -> None:
    # the default that made the worker's heap grow: the freed 4 MiB raised the threshold above 1 MiB
    seen = _large_block("default")
    assert seen["mapped_during"] == 0, seen


def test_a_fixed_threshold_maps_large_blocks_apart_and_unmaps_them_when_freed() -> None:
    assert MMAP_THRESHOLD_BYTES < 1 << 20
    seen = _large_block("fixed")
    assert seen["fixed"] is True, seen
    assert seen["mapped_during"] >= 1 << 20, seen  # mapped apart, not carved from the heap
    assert seen["mapped_after"] == 0, seen  # and gone from the process once freed
