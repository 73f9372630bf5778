"""The glibc behaviour the worker's heap trim relies on (stream.heap), pinned in a fresh interpreter:
memory freed below the top of the heap stays resident, and ``malloc_trim(0)`` gives it back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from stream.heap import trimmer

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
