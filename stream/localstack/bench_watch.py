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
(``BenchError``). Each poll also reads the machine's CPU time (/proc/stat), so a window says how
busy the cores were over it, every process counted: what tells a drain held by its cores (two
workers, a broker and the benchmark on two) from one held by something else.
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


def cpu_ticks(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """The machine's CPU time so far, in clock ticks summed over its cores: (busy, all), from the first
    line of /proc/stat (user, nice, system, idle, iowait, irq, softirq, steal; a guest's time is in
    user's already). None where there is none (not Linux): the figures that need it are left out."""
    try:
        first = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if len(first) < 5 or first[0] != "cpu":
        return None
    ticks = [int(value) for value in first[1:9]]
    idle = ticks[3] + ticks[4]  # idle, and waiting for input or output with nothing to run
    return sum(ticks) - idle, sum(ticks)


def busy_between(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time that was busy between two ``cpu_ticks`` readings (0 to 1)."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return (end[0] - start[0]) / (end[1] - start[1])


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
    # The share of the machine's CPU time that was busy over the window: every process's, the watched
    # ones, the broker's and the benchmark's own (``cpu_ticks``; None: not known). Near 1, the cores
    # were the limit.
    cores_busy: float | None = None
    counts: tuple[float, ...] = ()  # what each watched process had counted when the window closed

    @property
    def rate(self) -> float:
        return self.counted / self.seconds if self.seconds > 0 else 0.0

    @property
    def shares(self) -> list[float]:
        """Each watched process's share of what they had counted at the close (none if nothing was)."""
        total = sum(self.counts)
        return [count / total for count in self.counts] if total else []

    @classmethod
    def joined(cls, windows: Sequence[Window]) -> Window:
        """Several drains (the phases of one) as one window: what all counted over all their time;
        the cores' busy share weighted by each window's length (None if one's is not known); each
        process's counts added up (the same processes, in the same order, in each; none if not)."""
        seconds = sum(w.seconds for w in windows)
        busy = [(w.cores_busy, w.seconds) for w in windows]
        return cls(
            sum(w.counted for w in windows),
            seconds,
            every_process_started=all(w.every_process_started for w in windows),
            cores_busy=None
            if not seconds or any(share is None for share, _ in busy)
            else sum((share or 0.0) * length for share, length in busy) / seconds,
            counts=tuple(map(sum, zip(*(w.counts for w in windows), strict=True)))
            if len({len(w.counts) for w in windows}) == 1
            else (),
        )


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
    cpu: Callable[[], tuple[int, int] | None] = cpu_ticks,
) -> Window:
    """Poll ``counts()`` (one count per watched process) until they add up to ``total``; the window
    of the module doc. ``on_poll`` sees the sum at each poll (the long run samples memory there);
    ``cpu()`` is read at each poll too, for the share of the machine busy over the window."""
    watched = time.monotonic()
    # a poll: its time, the count, the machine's CPU ticks
    before: tuple[float, float, tuple[int, int] | None] = (watched, 0.0, cpu())  # the last before every process had counted
    before_any = before  # the last poll before any had
    opened: tuple[float, float, tuple[int, int] | None] | None = None
    best, progressed = -1.0, time.monotonic()
    while True:
        check()
        now, found, ticks = time.monotonic(), list(counts()), cpu()
        counted = sum(found)
        if on_poll is not None:
            on_poll(counted)
        if opened is None and all(c > 0 for c in found):
            opened = before
        elif opened is None:
            before = (now, counted, ticks)
            if counted == 0:
                before_any = before
        if counted >= total:
            start = opened or before_any
            return Window(
                total - start[1],
                now - start[0],
                every_process_started=opened is not None,
                cores_busy=busy_between(start[2], ticks),
                counts=tuple(found),
            )
        if counted > best:
            best, progressed = counted, now
        elif now - progressed > STALL_S:
            raise BenchError(f"{what}: no progress for {STALL_S:.0f}s at {counted:.0f} of {total:.0f}")
        time.sleep(min(POLL_MAX_S, max(POLL_S, (now - watched) * POLL_SHARE)))
