"""The benchmark's view of the processes it runs: their counters read from their own ``/metrics``,
their memory read from ``/proc``, and the drain window a throughput figure is measured over.

A drain is watched by polling: every ``POLL_S`` at first, then every 2% of the time watched so
far, at most every 2 s (a poll costs the process measured CPU: a worker profiled under 2–5 polls a
second spent about a tenth of its time answering them). Its window opens at
the last poll before every watched process had counted something (so a process's start-up, topic
checks and recovery are not in it) and closes at the first poll that shows the whole log counted;
the rate is what was counted in between over the time between. Both ends are polls, so a window
is longer than the work by at most 0.1 s and 2%, never shorter: a rate is never overstated. A
drain that makes no progress for ``STALL_S`` or whose process exits stops the benchmark
(``BenchError``).
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.core.events import EventType

POLL_S = 0.1  # the first polls of a drain
POLL_SHARE = 0.02  # later, a poll every 2% of the time watched so far...
POLL_MAX_S = 2.0  # ...and at least every 2 s
STALL_S = 180.0

# What the worker's cashback_events_consumed_total counts besides card events: clock ticks, account
# messages, and the internal events of time passing (none fall due in the bench's log).
CARD_EVENT_TYPES = frozenset(t.value for t in EventType) - {EventType.RETURN_WINDOW_ENDED.value}
_DECIDED = frozenset({"cashback_events_consumed_total"})
_SINK = frozenset({"cashback_sink_batch_size_sum", "cashback_sink_entries_total"})
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")  # the text format's sample line
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class BenchError(Exception):
    """The benchmark cannot go on (a process exited, a drain stalled); the message says which."""


def samples(port: int, names: frozenset[str]) -> list[tuple[str, dict[str, str], float]]:
    """The samples named ``names`` of a process's /metrics, as (name, labels, value); empty while it
    does not serve them yet. One plain request, and only those lines parsed: an httpx client per
    poll and prometheus_client's parser cost about 45 ms of CPU a poll, half a core at ten polls a
    second, taken from the processes measured on this 2-core machine. And the request names them
    (``?name[]=``, which prometheus_client's server answers from those metrics' collectors alone):
    a whole scrape of a worker (about 330 lines, its process collector reading /proc) took about a
    tenth of the samples of a profile of its drain, from the process measured."""
    query = urllib.parse.urlencode([("name[]", name) for name in sorted(names)])
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?{query}", timeout=2) as response:
            text = response.read().decode()
    except OSError:  # not listening yet, or going away
        return []
    found = []
    for line in text.splitlines():
        matched = _SAMPLE.match(line)
        if matched and matched[1] in names:
            found.append((matched[1], dict(_LABEL.findall(matched[2] or "")), float(matched[3])))
    return found


def card_events_decided(port: int) -> float:
    """The worker's count of card events decided (``cashback_events_consumed_total`` of the card
    event types, every outcome: a duplicate or a conflicting duplicate is decided too)."""
    return sum(value for _, labels, value in samples(port, _DECIDED) if labels.get("event_type") in CARD_EVENT_TYPES)


_MEMORY = ("cashback_worker_state_cache_bytes", "cashback_worker_state_cache_accounts", "cashback_worker_store_memory_bytes")


def memory_parts(port: int) -> tuple[int, int, int]:
    """Where the worker says its memory goes (its gauges, set every few seconds): the bytes its state
    cache holds (estimated), their accounts, and its local stores' shared block cache in bytes (0: not
    shown yet)."""
    found = {name: value for name, _, value in samples(port, frozenset(_MEMORY))}
    held, accounts, store = (int(found.get(name, 0)) for name in _MEMORY)
    return held, accounts, store


MEMORY_REPORT_S = 5.0  # how often the worker sets the gauges memory_parts reads (stream.matcher.LAG_INTERVAL_S)


def reported_memory(port: int, check: Callable[[], None], limit_s: float = 3 * MEMORY_REPORT_S) -> tuple[int, int, int]:
    """``memory_parts`` once the worker has set its gauges: a drain quicker than its first report (the quick mode,
    a fast machine) is over before it. BenchError past ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while True:
        check()
        held, accounts, store = memory_parts(port)
        if held > 0 and store > 0:
            return held, accounts, store
        if time.monotonic() > deadline:
            raise BenchError(f"the worker set no memory gauges within {limit_s:.0f}s")
        time.sleep(POLL_S)


def sink_counts(port: int) -> tuple[float, float]:
    """The sink's (accrual records handled, new ledger entries written): ``cashback_sink_batch_size``'s
    sum counts every record of its batches (NOT_EARNED lines and re-sent entries too),
    ``cashback_sink_entries_total{result="written"}`` the rows it added to the ledger."""
    found = samples(port, _SINK)
    records = sum(value for name, _, value in found if name == "cashback_sink_batch_size_sum")
    written = sum(
        value for name, labels, value in found if name == "cashback_sink_entries_total" and labels.get("result") == "written"
    )
    return records, written


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (``VmRSS`` of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def alive(children: dict[str, subprocess.Popen[Any]], logs: Path) -> Callable[[], None]:
    """A check that raises BenchError, with the end of its log, when a watched child has exited."""

    def check() -> None:
        for name, process in children.items():
            if process.poll() is not None:
                raise BenchError(f"{name} exited by itself with {process.returncode}:\n{log_tail(logs / f'{name}.log')}")

    return check


@dataclass(frozen=True)
class Window:
    """What was counted over how long."""

    counted: float
    seconds: float
    every_process_started: bool = True  # False: some watched process counted nothing (the window is the others')

    @property
    def rate(self) -> float:
        return self.counted / self.seconds if self.seconds > 0 else 0.0


def first_count(count: Callable[[], float], since: float, check: Callable[[], None], what: str, limit_s: float = 300.0) -> float:
    """Seconds from ``since`` (a monotonic time) to the first poll at which ``count()`` is above 0."""
    while time.monotonic() - since < limit_s:
        check()
        if count() > 0:
            return time.monotonic() - since
        time.sleep(POLL_S)
    raise BenchError(f"{what}: nothing counted within {limit_s:.0f}s")


def watch_drain(
    counts: Callable[[], Sequence[float]],
    total: float,
    check: Callable[[], None],
    what: str,
    on_poll: Callable[[float], None] | None = None,
) -> Window:
    """Poll ``counts()`` (one count per watched process) until they add up to ``total``; the window
    of the module doc. ``on_poll`` sees the sum at each poll (the long run samples memory there)."""
    watched = time.monotonic()
    before = (watched, 0.0)  # the last poll before every process had counted something
    before_any = before  # the last poll before any had
    opened: tuple[float, float] | None = None
    best, progressed = -1.0, time.monotonic()
    while True:
        check()
        now, found = time.monotonic(), list(counts())
        counted = sum(found)
        if on_poll is not None:
            on_poll(counted)
        if opened is None and all(c > 0 for c in found):
            opened = before
        elif opened is None:
            before = (now, counted)
            if counted == 0:
                before_any = before
        if counted >= total:
            start = opened or before_any
            return Window(total - start[1], now - start[0], every_process_started=opened is not None)
        if counted > best:
            best, progressed = counted, now
        elif now - progressed > STALL_S:
            raise BenchError(f"{what}: no progress for {STALL_S:.0f}s at {counted:.0f} of {total:.0f}")
        time.sleep(min(POLL_MAX_S, max(POLL_S, (now - watched) * POLL_SHARE)))
