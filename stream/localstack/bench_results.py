"""The benchmark's results: every figure of one run, its table, its one line, ``results.json`` and
the chart ``results.png``.

The line, the last the benchmark prints:
``processor/raw=R.RR sink/copy=S.SS p99_ms_at_1k=P rss_growth=G restart_s=T two_workers=W``
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def interpreter() -> str:
    """This interpreter: its implementation, version and executable, the virtual environment's resolved to the
    installed one it was made from (which build it is: a distribution's, a version manager's)."""
    return f"{platform.python_implementation()} {platform.python_version()} {os.path.realpath(sys.executable)}"


@dataclass
class Correctness:
    """The chaos oracle's judgement of the main topic set (``stream.localstack.chaos_oracle``)."""

    accounts: int = 0  # accounts whose balances were compared
    mismatched_accounts: int = 0
    lost_entries: int = 0
    duplicate_entries: int = 0
    must_dead_letter: int = 0  # conflicting duplicates
    dead_lettered: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.mismatched_accounts == 0
            and self.lost_entries == 0
            and self.duplicate_entries == 0
            and self.dead_lettered == self.must_dead_letter
        )


@dataclass
class Results:
    # the run
    seed: int
    quick: bool
    events: int  # card events preloaded for the throughput runs
    long_events: int  # card events of the long run (memory, restart)
    paced_events: int  # card events published at the paced rate
    paced_rate: float
    restart_events: int  # card events published while the long run's worker was stopped
    partitions: int
    cpu_count: int = field(default_factory=lambda: os.cpu_count() or 0)
    date: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    # the interpreter every process of the run ran on (they are started with the benchmark's own): its build
    # moves every Python figure (README, Performance: a distribution's optimised build or a version manager's)
    python: str = field(default_factory=interpreter)
    # throughput
    raw_events_per_s: float = 0.0
    faust_floor_events_per_s: float = 0.0  # a bare Faust agent that only counts (stream.localstack.bench_floor)
    worker_events_per_s: float = 0.0
    worker_first_event_s: float = 0.0  # from the worker's start to its first card event
    accrual_records: int = 0  # what the worker produced for the preloaded log (NOT_EARNED lines too)
    sink_rows_per_s: float = 0.0  # every row it wrote: ledger entries, purchases that earned nothing, reconciliation items
    sink_entries_per_s: float = 0.0  # new ledger entries
    sink_records_per_s: float = 0.0  # every accrual record (NOT_EARNED lines and re-sent entries too)
    copied_rows: int = 0  # the rows the sink wrote, COPYed again: these three
    ledger_rows: int = 0
    not_earned_rows: int = 0
    item_rows: int = 0
    copy_rows_per_s: float = 0.0  # the median of the COPY passes (stream.localstack.bench_baselines.copy_baseline)
    copy_passes_rows_per_s: list[float] = field(default_factory=list)  # each pass, in the order they ran
    # the share of the machine's CPU time busy over the sink's drain and over COPY's median pass (every process;
    # None: not known): whether the sink is held by the cores, as COPY is not
    sink_cores_busy: float | None = None
    copy_cores_busy: float | None = None
    two_workers_events_per_s: float = 0.0
    # The share of the machine's CPU time busy over the one worker's drain and over the two workers'
    # (every process: the workers, the broker, the benchmark; None: not known, not Linux), and each of
    # the two workers' share of the events: what says whether the pair was held by the cores or by
    # how the partitions' events fell between them.
    worker_cores_busy: float | None = None
    two_workers_cores_busy: float | None = None
    two_workers_shares: list[float] = field(default_factory=list)
    # latency at the paced rate
    p50_ms_at_1k: float = 0.0
    p99_ms_at_1k: float = 0.0
    max_ms_at_1k: float = 0.0
    latency_events: int = 0
    latency_events_without_row: int = 0
    published_per_s: float = 0.0
    # the part of the latency up to the event's first accrual leaving the worker (its producer's timestamp)
    worker_p50_ms_at_1k: float = 0.0
    worker_p99_ms_at_1k: float = 0.0
    p99_by_second_ms: list[float] = field(default_factory=list)  # the latency's p99 per second of publication
    paced_backlog_s: float = 0.0  # from the paced publication's end to the worker's last decision of it
    # the long run
    rss_at_quarter_bytes: int = 0
    rss_at_end_bytes: int = 0
    rss_at_eighths_bytes: list[int] = field(default_factory=list)  # after 1/8, 2/8, ... 8/8 of the long run
    # the worker's own gauges at those points: its state cache (estimated bytes, accounts) and its stores' block cache
    state_cache_bytes_at_eighths: list[int] = field(default_factory=list)
    state_cache_accounts_at_eighths: list[int] = field(default_factory=list)
    store_memory_at_eighths_bytes: list[int] = field(default_factory=list)
    long_worker_events_per_s: float = 0.0
    restart_s: float = 0.0
    correctness: Correctness = field(default_factory=Correctness)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the whole run

    @property
    def processor_over_raw(self) -> float:
        return _ratio(self.worker_events_per_s, self.raw_events_per_s)

    @property
    def floor_over_raw(self) -> float:
        """The most ``processor_over_raw`` can be with Faust's delivery of messages on this machine."""
        return _ratio(self.faust_floor_events_per_s, self.raw_events_per_s)

    @property
    def sink_over_copy(self) -> float:
        return _ratio(self.sink_rows_per_s, self.copy_rows_per_s)

    @property
    def rss_growth(self) -> float:
        return _ratio(self.rss_at_end_bytes, self.rss_at_quarter_bytes)

    @property
    def two_workers(self) -> float:
        return _ratio(self.two_workers_events_per_s, self.worker_events_per_s)

    def line(self) -> str:
        return (
            f"processor/raw={self.processor_over_raw:.2f} sink/copy={self.sink_over_copy:.2f} "
            f"p99_ms_at_1k={self.p99_ms_at_1k:.0f} rss_growth={self.rss_growth:.2f} "
            f"restart_s={self.restart_s:.1f} two_workers={self.two_workers:.2f}"
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["correctness"]["passed"] = self.correctness.passed
        data["figures"] = {
            "processor_over_raw": self.processor_over_raw,
            "sink_over_copy": self.sink_over_copy,
            "p99_ms_at_1k": self.p99_ms_at_1k,
            "rss_growth": self.rss_growth,
            "restart_s": self.restart_s,
            "two_workers": self.two_workers,
        }
        data["floor_over_raw"] = self.floor_over_raw
        data["line"] = self.line()
        return data

    def table(self) -> str:
        mib = 1024 * 1024
        rows = [
            ("raw aiokafka loop", f"{self.raw_events_per_s:,.0f} events/s", f"{self.events:,} card events"),
            ("bare Faust agent", f"{self.faust_floor_events_per_s:,.0f} events/s",
             f"only counts what Faust hands it: floor/raw {self.floor_over_raw:.3f}, the most processor/raw can be"),
            ("worker (1 process)", f"{self.worker_events_per_s:,.0f} events/s", f"first event {self.worker_first_event_s:.1f}s after start"),
            ("  processor/raw", f"{self.processor_over_raw:.3f}", "target >= 0.25"),
            ("sink", f"{self.sink_rows_per_s:,.0f} rows/s",
             f"{self.sink_entries_per_s:,.0f} ledger entries/s; {self.sink_records_per_s:,.0f} accrual records/s (re-sent ones too)"),
            ("asyncpg COPY", f"{self.copy_rows_per_s:,.0f} rows/s",
             f"the same {self.copied_rows:,} rows: {self.ledger_rows:,} entries, {self.not_earned_rows:,} not earned, {self.item_rows:,} items; "
             "median of " + " / ".join(f"{rate:,.0f}" for rate in self.copy_passes_rows_per_s)),
            ("  sink/copy", f"{self.sink_over_copy:.3f}", "target >= 0.5"),
            ("  cores busy, sink / COPY", f"{_percent(self.sink_cores_busy)} / {_percent(self.copy_cores_busy)}",
             f"of the machine's {self.cpu_count} over the sink's drain and over COPY's median pass (every process)"),
            ("latency p50 / p99 / max", f"{self.p50_ms_at_1k:,.0f} / {self.p99_ms_at_1k:,.0f} / {self.max_ms_at_1k:,.0f} ms",
             f"{self.latency_events:,} events at {self.published_per_s:,.0f}/s ({self.latency_events_without_row:,} without a row), "
             f"worker done {self.paced_backlog_s:.1f}s after the last"),
            ("  of which in the worker", f"{self.worker_p50_ms_at_1k:,.0f} / {self.worker_p99_ms_at_1k:,.0f} ms",
             "p50 / p99 from the broker timestamp to the event's first accrual leaving the worker"),
            ("worker RSS at 1/4 / end", f"{self.rss_at_quarter_bytes / mib:,.0f} / {self.rss_at_end_bytes / mib:,.0f} MiB",
             f"growth {self.rss_growth:.2f} over {self.long_events:,} events ({self.long_worker_events_per_s:,.0f} events/s)"),
            ("worker RSS at each 1/8", " ".join(f"{rss / mib:,.0f}" for rss in self.rss_at_eighths_bytes) + " MiB",
             "whether it levels off (the bounded caches full) or keeps growing"),
            ("  state cache at each 1/8", " ".join(f"{held / mib:,.0f}" for held in self.state_cache_bytes_at_eighths) + " MiB",
             "accounts: " + " ".join(f"{accounts:,}" for accounts in self.state_cache_accounts_at_eighths)),
            ("  local stores at each 1/8", " ".join(f"{store / mib:,.0f}" for store in self.store_memory_at_eighths_bytes) + " MiB",
             "the shared block cache in use, memtables included (a budget of 64)"),
            ("restart to first event", f"{self.restart_s:.1f} s", f"after SIGTERM, {self.restart_events:,} events published meanwhile; target <= 15"),
            ("two workers", f"{self.two_workers_events_per_s:,.0f} events/s", f"{self.two_workers:.2f} of one; target >= 1.7"),
            ("  cores busy, one / two workers", f"{_percent(self.worker_cores_busy)} / {_percent(self.two_workers_cores_busy)}",
             f"of the machine's {self.cpu_count} over each drain (every process); each worker's share of the events: "
             + (" / ".join(_percent(share) for share in self.two_workers_shares) or "-")),
            ("correctness", "passed" if self.correctness.passed else "FAILED",
             f"{self.correctness.accounts:,} accounts, mismatched {self.correctness.mismatched_accounts}, "
             f"lost {self.correctness.lost_entries}, duplicate {self.correctness.duplicate_entries}, "
             f"dead-lettered {self.correctness.dead_lettered}/{self.correctness.must_dead_letter}"),
        ]  # fmt: skip
        width = max(len(r[0]) for r in rows)
        value_width = max(len(r[1]) for r in rows)
        head = (
            f"bench seed={self.seed} events={self.events:,} long={self.long_events:,} partitions={self.partitions} "
            f"cpus={self.cpu_count} {self.date}{' (quick)' if self.quick else ''}\n  python {self.python}"
        )
        lines = [head] + [f"  {a:<{width}}  {b:>{value_width}}  {c}" for a, b, c in rows]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes + self.correctness.notes])


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def write(results: Results, output_dir: Path) -> tuple[Path, Path]:
    """``results.json`` and ``results.png`` in ``output_dir`` (created)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    data_path, chart_path = output_dir / "results.json", output_dir / "results.png"
    data_path.write_text(json.dumps(results.to_json(), indent=2) + "\n")
    chart(results, chart_path)
    return data_path, chart_path


def chart(results: Results, path: Path) -> None:
    """Throughput side by side with its baseline (log scale), and the other figures beside their targets."""
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    figure, (rates, others) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    names = ["raw loop", "Faust floor", "worker", "2 workers", "COPY", "sink"]
    values = [
        results.raw_events_per_s,
        results.faust_floor_events_per_s,
        results.worker_events_per_s,
        results.two_workers_events_per_s,
        results.copy_rows_per_s,
        results.sink_rows_per_s,
    ]
    colours = ["#9e9e9e", "#9e9e9e", "#1f77b4", "#1f77b4", "#9e9e9e", "#ff7f0e"]
    bars = rates.bar(names, [max(v, 1.0) for v in values], color=colours)
    rates.set_yscale("log")
    rates.set_ylabel("per second (events; COPY and sink: rows)")
    rates.set_title("throughput: the project (colour) and its baselines (grey)")
    for bar, value in zip(bars, values, strict=True):
        rates.annotate(f"{value:,.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    figures = [
        ("processor/raw", results.processor_over_raw, 0.25),
        ("sink/copy", results.sink_over_copy, 0.5),
        ("two workers", results.two_workers, 1.7),
        ("rss growth", results.rss_growth, 1.10),
    ]
    labels = [f[0] for f in figures]
    others.barh(labels, [f[1] for f in figures], color="#1f77b4")
    others.scatter([f[2] for f in figures], labels, marker="|", s=400, color="#d62728", label="target", zorder=3)
    for y, (_, value, _) in enumerate(figures):
        others.annotate(f"{value:.2f}", (value, y), va="center", xytext=(4, 0), textcoords="offset points")
    others.legend(loc="lower right")
    others.set_title(f"p99 at 1k/s {results.p99_ms_at_1k:,.0f} ms; restart {results.restart_s:.1f} s")
    verdict = "correct" if results.correctness.passed else "LEDGER DIFFERS FROM THE ORACLE"
    figure.suptitle(
        f"make bench: {results.events:,} events, seed {results.seed}, {results.cpu_count} CPUs, {results.date}: {verdict}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
