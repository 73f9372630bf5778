"""The benchmark's quick mode (``make bench`` at 3,000 events): it runs every stage on its own broker
and Postgres, judges the ledger against the pure engine, and reports every figure. The figures
themselves are not asserted (a shared 2-core machine makes them noise at this size); that each
was measured, and that the ledger is right, is. Run as the operator runs it, in a subprocess, with
its results written to the test's own directory, never over a full run's ``build/bench``."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.codec import Codec, DecodeError
from stream.account_states import CACHED_BYTES
from stream.backtest import Replay
from stream.composition import REPO_ROOT
from stream.core.offers import OfferBook
from stream.localstack.bench import Plan, plan_of
from stream.localstack.bench_baselines import COPY_PASSES
from stream.localstack.bench_streams import PHASES, bench_log, in_phases
from stream.localstack.bench_watch import MEMORY_REPORT_S
from stream.localstack.chaos_log import Message, chaos_offers
from stream.matcher import LAG_INTERVAL_S
from stream.simulate.messages import Outgoing
from stream.worker_app import STORE_MEMORY_BYTES

pytestmark = pytest.mark.integration

LINE = re.compile(
    r"^processor/raw=(\d+\.\d\d) sink/copy=(\d+\.\d\d) p99_ms_at_1k=(\d+) rss_growth=(\d+\.\d\d) "
    r"restart_s=(\d+\.\d) two_workers=(\d+\.\d\d)$"
)
RATES = (
    "raw_events_per_s",
    "faust_floor_events_per_s",
    "worker_events_per_s",
    "sink_rows_per_s",
    "sink_entries_per_s",
    "sink_records_per_s",
)
RATES += ("copy_rows_per_s",)
RATES += ("two_workers_events_per_s", "long_worker_events_per_s")


def test_the_quick_benchmark_measures_every_figure_on_a_correct_ledger(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    env.update(BENCH_OUTPUT_DIR=str(tmp_path), BENCH_SEED="1", PYTHONUNBUFFERED="1")
    run = subprocess.run(
        [sys.executable, "-m", "stream.localstack.bench", "--quick"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = f"exit {run.returncode}\n--- stdout ---\n{run.stdout}\n--- stderr ---\n{run.stderr[-5000:]}"
    assert run.returncode == 0, output
    last = run.stdout.rstrip("\n").splitlines()[-1]
    assert LINE.match(last), output

    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.png").stat().st_size > 10_000
    assert results["line"] == last
    assert results["quick"] is True and results["seed"] == 1 and results["cpu_count"] >= 1 and results["date"]
    assert results["events"] == 3_000 and results["long_events"] == 4_000 and results["partitions"] == 8
    # which interpreter ran it (its build moves every figure): this one, the virtual environment's resolved
    assert results["python"] == f"CPython {platform.python_version()} {os.path.realpath(sys.executable)}", results["python"]
    assert f"\n  python {results['python']}\n" in run.stdout, output
    figures = results["figures"]
    assert set(figures) == {"processor_over_raw", "sink_over_copy", "p99_ms_at_1k", "rss_growth", "restart_s", "two_workers"}
    assert all(value > 0 for value in figures.values()), figures
    assert all(results[rate] > 0 for rate in RATES), {rate: results[rate] for rate in RATES}
    assert results["latency_events"] > 0 and results["ledger_rows"] > 0
    # the COPY baseline writes again every row the sink wrote, and sink/copy compares the two over those rows
    assert results["not_earned_rows"] > 0, "the lifecycle mix makes purchases that earned nothing"
    assert results["copied_rows"] == results["ledger_rows"] + results["not_earned_rows"] + results["item_rows"]
    assert figures["sink_over_copy"] == pytest.approx(results["sink_rows_per_s"] / results["copy_rows_per_s"])
    passes = results["copy_passes_rows_per_s"]  # the baseline is the median of its passes
    assert len(passes) == COPY_PASSES and results["copy_rows_per_s"] == pytest.approx(sorted(passes)[len(passes) // 2])
    # how busy the machine's cores were over the one worker's drain and the two workers', and how the
    # events fell between the two (in a quick run the first worker up may take them all before the
    # second joins: a share may be 0)
    assert 0 < results["worker_cores_busy"] <= 1 and 0 < results["two_workers_cores_busy"] <= 1, results
    # and over the sink's drain and COPY's median pass (a quick pass may be shorter than the clock's tick: none)
    assert 0 < results["sink_cores_busy"] <= 1, results
    assert results["copy_cores_busy"] is None or 0 <= results["copy_cores_busy"] <= 1, results
    shares = results["two_workers_shares"]
    assert len(shares) == 2 and all(share >= 0 for share in shares) and sum(shares) == pytest.approx(1), shares
    assert results["floor_over_raw"] == pytest.approx(results["faust_floor_events_per_s"] / results["raw_events_per_s"])
    eighths = results["rss_at_eighths_bytes"]  # a poll may see several eighths at once: then equal values
    assert len(eighths) == 8 and all(rss > 0 for rss in eighths) and eighths[-1] == results["rss_at_end_bytes"], eighths
    # beside each, what the worker's own gauges said holds its memory (set every few seconds: 0 before the first)
    held, stores = results["state_cache_bytes_at_eighths"], results["store_memory_at_eighths_bytes"]
    assert len(held) == len(stores) == len(results["state_cache_accounts_at_eighths"]) == 8, results
    assert 0 < held[-1] <= CACHED_BYTES and 0 < stores[-1] <= 1.5 * STORE_MEMORY_BYTES, results

    # The rows are the seed's: the pure engine on the same log, drained in the bench's phases (its
    # authorisations, then its settlements), writes exactly as many. The fetcher's order across the
    # two topics gave anything from 126,000 to 188,000 ledger entries for the same 200,000 events.
    assert results["copied_rows"] == rows_of_the_seed(plan_of(["--quick", "--seed", "1"])), results

    correctness = results["correctness"]
    assert correctness["passed"] is True, correctness
    assert correctness["accounts"] > 0 and correctness["mismatched_accounts"] == 0 and correctness["lost_entries"] == 0


def rows_of_the_seed(plan: Plan) -> int:
    """The ledger's rows (entries, purchases not earned, reconciliation items: one accrual id each) of
    the bench's preloaded log, the account messages first, then the card events in its phases."""
    codec = Codec()
    log = bench_log(plan.seed, plan.events, plan.paced_events, codec)  # the paced events are cut from the same log
    replay = Replay(OfferBook.of(chaos_offers()))

    def outgoing(message: Message) -> Outgoing:
        role, key, value, _ = message
        try:
            return Outgoing(role, key, codec.decode(value)[1])
        except DecodeError:
            return Outgoing(role, key)

    for message in [*log.account_messages, *(m for phase in in_phases(log.preloaded) for m in phase)]:
        replay.feed(outgoing(message))
    return len(replay.entries)


def test_the_bench_drains_each_accounts_authorisations_before_its_settlements() -> None:
    log = bench_log(1, 2_000, 0, Codec())
    phases = in_phases(log.preloaded)
    assert [{m[0] for m in phase} for phase in phases] == [{role} for role in PHASES] == [{"authorizations"}, {"settlements"}]
    assert sorted(map(id, log.preloaded)) == sorted(id(m) for phase in phases for m in phase)  # every event, once
    where = {id(m): i for i, m in enumerate(log.preloaded)}
    for phase in phases:  # each in the log's order
        positions = [where[id(m)] for m in phase]
        assert positions == sorted(positions)


def test_the_bench_waits_for_the_interval_at_which_the_worker_reports_its_memory() -> None:
    assert MEMORY_REPORT_S == LAG_INTERVAL_S
