"""The benchmark's run (``Bench``): its own broker and Postgres, its stages in order, each figure
into ``Results``, and everything it started stopped at the end, whatever happened.

The stages and what each measures are described in ``stream.localstack.bench``, the command line.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from schemas.codec import Codec
from stream.composition import System
from stream.core.offers import OfferBook
from stream.localstack.bench_baselines import copy_baseline, faust_floor, raw_loop
from stream.localstack.bench_latency import (
    broker_times,
    enable_commit_timestamps,
    latency,
    publish_paced,
    readable_times,
    table_marks,
)
from stream.localstack.bench_results import Correctness, Results
from stream.localstack.bench_streams import (
    PARTITIONS,
    PHASES,
    BenchLog,
    TopicSet,
    bench_log,
    end_offsets,
    in_phases,
    message_count,
    preload,
    prepare,
    publish_all,
    topic_set,
)
from stream.localstack.bench_watch import (
    BenchError,
    Window,
    alive,
    card_events_decided,
    first_count,
    memory_parts,
    reported_memory,
    rss_bytes,
    sink_counts,
    watch_drain,
)
from stream.localstack.chaos_clients import drained
from stream.localstack.chaos_faults import Processes
from stream.localstack.chaos_log import Message, chaos_offers
from stream.localstack.chaos_oracle import Report, judge
from stream.localstack.kafka import DEFAULT_CACHE_DIR, KafkaBroker
from stream.localstack.postgres import EmbeddedPostgres
from stream.localstack.process import free_port
from stream.settings import Settings

PACED_RATE = 1_000.0  # events/s of the latency figure (p99_ms_at_1k)
LONG_SLICES = 16  # the long run's log is published in this many slices (``Bench.long_run``)


@dataclass(frozen=True)
class Plan:
    """The sizes of one run (``BENCH_*`` or the command line's flags)."""

    events: int  # card events preloaded for the throughput stages
    long_events: int  # card events of the long run
    seed: int
    paced_s: float  # seconds of publication at PACED_RATE
    quick: bool
    output_dir: Path
    keep: bool = False  # keep the run's directory

    @property
    def paced_events(self) -> int:
        return int(PACED_RATE * self.paced_s)

    @property
    def restart_events(self) -> int:
        """Card events published while the long run's worker is stopped."""
        return max(200, self.long_events // 100)


class Bench:
    def __init__(self, plan: Plan, work_dir: Path, say: Callable[..., Any] = print) -> None:
        self.plan = plan
        self.work_dir = work_dir
        self._say = say
        self.started = time.monotonic()
        self.codec = Codec()
        self.offers = chaos_offers()
        self.book = OfferBook.of(self.offers)
        self.run_id = f"{plan.seed}-{os.getpid()}"
        self.groups: list[Processes] = []
        self.results = Results(
            seed=plan.seed,
            quick=plan.quick,
            events=plan.events,
            long_events=plan.long_events,
            paced_events=plan.paced_events,
            paced_rate=PACED_RATE,
            restart_events=plan.restart_events,
            partitions=PARTITIONS,
        )

    def say(self, what: str) -> None:
        self._say(f"[{time.monotonic() - self.started:7.1f}s] {what}", flush=True)

    def run(self) -> Results:
        broker = KafkaBroker(DEFAULT_CACHE_DIR, self.work_dir / "kafka", port=free_port(), partitions_default=PARTITIONS)
        postgres = EmbeddedPostgres(self.work_dir / "postgres", port=free_port(), fast=True)
        try:
            self.say("starting Kafka and Postgres")
            bootstrap = broker.start()
            asyncio.run(enable_commit_timestamps(postgres.start()))
            postgres.stop()  # track_commit_timestamp takes effect at a start
            self.database_url = postgres.start()
            self.base_env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": self.database_url}
            asyncio.run(System(Settings.from_env(self.base_env)).migrate_database())
            log = bench_log(self.plan.seed, self.plan.events, self.plan.paced_events, self.codec)
            self.main_topic_set(log)
            self.two_workers(BenchLog(log.account_messages, log.preloaded, []))
            del log
            self.long_run()
        finally:
            for group in self.groups:
                group.terminate_all()
            postgres.stop()
            broker.stop()
        self.results.seconds = time.monotonic() - self.started
        return self.results

    # --- the stages ------------------------------------------------------------------------------

    def main_topic_set(self, log: BenchLog) -> None:
        """Stages 1 to 6 of the module doc: the baselines on a topic set of their own, the rest on one."""
        results, codec = self.results, self.codec
        baseline = self._prepare("raw", log)  # the same preloaded log, never read by a worker
        self.say(f"raw loop over {len(log.preloaded):,} card events")
        results.raw_events_per_s = uvloop.run(raw_loop(baseline.settings, baseline.catalogue, codec, len(log.preloaded))).rate
        self.say(f"raw loop: {results.raw_events_per_s:,.0f} events/s")
        results.faust_floor_events_per_s = faust_floor(
            baseline.env, baseline.settings, baseline.catalogue, len(log.preloaded), self.work_dir / "floor-data"
        ).rate
        self.say(f"bare Faust agent: {results.faust_floor_events_per_s:,.0f} events/s")

        topics = self._prepare("main", log, cards=False)
        settings, catalogue = topics.settings, topics.catalogue
        group = self._processes(topics)
        # The judgement folds every account message before any card event (as a card processor that
        # published them first would expect). Read from topics that all hold a backlog, the worker's
        # order across them is the fetcher's: a purchase could be decided before its account's
        # activation was read. So the worker folds the account messages first, is stopped, and
        # takes its profiles back from its local store when it starts on the card events.
        self.say("worker folding the account messages")
        group.start_worker("main-worker")
        self._wait_drained(topics, with_sink=False, check=alive(group.children, self.work_dir))
        group.stop("main-worker")

        window, results.worker_first_event_s = self._drain_in_phases(topics, group, ["main-worker"], log.preloaded)
        results.worker_events_per_s = window.rate
        results.worker_cores_busy = window.cores_busy
        self.say(f"worker: {window.rate:,.0f} events/s over {window.seconds:.1f}s")
        port, check = group.metrics_ports["main-worker"], alive(group.children, self.work_dir)

        results.accrual_records = asyncio.run(message_count(settings, [catalogue.accruals.name]))
        self.say(f"sink writing {results.accrual_records:,} accrual records")
        group.start("main-sink", "sink")
        sink_port = group.metrics_ports["main-sink"]
        sinking = watch_drain(lambda: [sink_counts(sink_port)[0]], results.accrual_records, check, "the sink")
        results.sink_records_per_s = sinking.rate
        results.sink_cores_busy = sinking.cores_busy
        results.sink_entries_per_s = sink_counts(sink_port)[1] / sinking.seconds if sinking.seconds else 0.0
        self.say(f"sink: {results.sink_entries_per_s:,.0f} ledger entries/s over {sinking.seconds:.1f}s")
        self._wait_drained(topics, with_sink=True, check=check)

        copied, per_table, results.copy_passes_rows_per_s = asyncio.run(copy_baseline(self.database_url))
        results.copied_rows, results.copy_rows_per_s = int(copied.counted), copied.rate
        results.copy_cores_busy = copied.cores_busy
        results.ledger_rows = per_table["ledger_entries"]
        results.not_earned_rows = per_table["purchases_not_earned"]
        results.item_rows = per_table["reconciliation_items"]
        # every row the sink wrote, over its window: the rows COPY wrote again
        results.sink_rows_per_s = copied.counted / sinking.seconds if sinking.seconds else 0.0
        passes = " / ".join(f"{rate:,.0f}" for rate in results.copy_passes_rows_per_s)
        self.say(
            f"COPY of the sink's {results.copied_rows:,} rows ({results.ledger_rows:,} ledger): {copied.seconds:.2f}s, "
            f"the median of {passes} rows/s"
        )

        self.say(f"publishing {len(log.later):,} more card events at {PACED_RATE:,.0f}/s")
        marks = asyncio.run(table_marks(self.database_url))
        decided_before = card_events_decided(port)
        inputs = [catalogue.authorizations.name, catalogue.settlements.name]
        since_offsets = asyncio.run(end_offsets(settings, inputs))
        accruals_since = asyncio.run(end_offsets(settings, [catalogue.accruals.name]))
        published_per_s = uvloop.run(publish_paced(settings, catalogue, log.later, PACED_RATE))
        published_at = time.monotonic()
        total = decided_before + len(log.later)
        watch_drain(lambda: [card_events_decided(port)], total, check, "the worker at the paced rate")
        results.paced_backlog_s = time.monotonic() - published_at
        self._wait_drained(topics, with_sink=True, check=check)
        measured = latency(
            asyncio.run(broker_times(settings, codec, since_offsets)),
            asyncio.run(readable_times(self.database_url, marks)),
            published_per_s,
            asyncio.run(broker_times(settings, codec, accruals_since)),
        )
        results.p50_ms_at_1k, results.p99_ms_at_1k, results.max_ms_at_1k = measured.p50_ms, measured.p99_ms, measured.max_ms
        results.latency_events, results.latency_events_without_row = measured.events, measured.without_row
        results.published_per_s = measured.published_per_s
        results.worker_p50_ms_at_1k, results.worker_p99_ms_at_1k = measured.worker_p50_ms, measured.worker_p99_ms
        results.p99_by_second_ms = measured.p99_by_second_ms
        self.say(
            f"latency: p50 {measured.p50_ms:,.0f} ms, p99 {measured.p99_ms:,.0f} ms "
            f"(to the entries leaving the worker: p50 {measured.worker_p50_ms:,.0f} ms, p99 {measured.worker_p99_ms:,.0f} ms)"
        )
        group.terminate_all()

        self.say("judging the ledger against the pure engine")
        results.correctness = asyncio.run(self._judge(settings, catalogue))
        self.say("correctness " + ("passed" if results.correctness.passed else "FAILED"))

    def two_workers(self, log: BenchLog) -> None:
        """Stage 7: the preloaded log drained by two workers, in the same two phases as one."""
        topics = self._prepare("pair", log, cards=False)
        group = self._processes(topics)
        self.say("two workers draining the preloaded log")
        window, _ = self._drain_in_phases(topics, group, ["pair-worker-1", "pair-worker-2"], log.preloaded)
        self.results.two_workers_events_per_s = window.rate
        self.results.two_workers_cores_busy = window.cores_busy
        self.results.two_workers_shares = window.shares
        self.say(f"two workers: {window.rate:,.0f} events/s over {window.seconds:.1f}s")
        if not window.every_process_started:
            self.results.notes.append("one of the two workers decided nothing: the pair's figure is one worker's")
        group.terminate_all()

    def long_run(self) -> None:
        """Stage 8: memory over a long drain, and a restart holding its state."""
        plan, results = self.plan, self.results
        log = bench_log(plan.seed, plan.long_events, plan.restart_events, self.codec)
        topics = self._prepare("long", log, cards=False)
        group = self._processes(topics)
        self.say(f"one worker deciding {plan.long_events:,} card events, published in {LONG_SLICES} slices")
        group.start_worker("long-worker")
        port, check = group.metrics_ports["long-worker"], alive(group.children, self.work_dir)
        pid = group.children["long-worker"].pid
        rss: dict[str, int] = {}
        eighths: list[int] = []  # the RSS once each eighth of the log is decided: the curve behind the growth

        def sample(counted: float) -> None:
            if counted < plan.long_events // 8:
                return
            now = rss_bytes(pid)
            if counted >= plan.long_events // 4:
                rss.setdefault("quarter", now)
            if counted >= plan.long_events:
                rss.setdefault("end", now)
            while len(eighths) < 8 and counted >= plan.long_events * (len(eighths) + 1) // 8:
                eighths.append(now)
                held, accounts, store = memory_parts(port)  # what the worker says holds it
                results.state_cache_bytes_at_eighths.append(held)
                results.state_cache_accounts_at_eighths.append(accounts)
                results.store_memory_at_eighths_bytes.append(store)

        # The log in slices of its order, each slice's authorisations then its settlements, each drained before the
        # next is published (the worker running): the rows, and so the states measured, are the seed's (as in
        # ``in_phases``), and a slice's clearings follow its authorisations by a slice at most, as by days in a card
        # processor's log, not by half the log (open transactions are what a state keeps).
        # Its rate: from the first decision seen to the last, the publications between the slices included.
        size, decided, since = -(-len(log.preloaded) // LONG_SLICES), 0, time.monotonic()
        first: tuple[float, float] | None = None
        for start in range(0, len(log.preloaded), size):
            for phase in in_phases(log.preloaded[start : start + size]):
                asyncio.run(publish_all(topics.settings, topics.catalogue, phase))
                if first is None and phase:
                    first_count(lambda: card_events_decided(port), since, check, "the long run")
                    first = (time.monotonic(), card_events_decided(port))
                decided += len(phase)
                watch_drain(lambda: [card_events_decided(port)], decided, check, "the long run", on_poll=sample)
        if first is not None and time.monotonic() > first[0]:
            results.long_worker_events_per_s = (decided - first[1]) / (time.monotonic() - first[0])
        if results.state_cache_bytes_at_eighths and not results.state_cache_bytes_at_eighths[-1]:
            # the log was decided before the worker first reported its memory: the end's figures once it has
            held, accounts, store = reported_memory(port, check)
            results.state_cache_bytes_at_eighths[-1], results.state_cache_accounts_at_eighths[-1] = held, accounts
            results.store_memory_at_eighths_bytes[-1] = store
        results.rss_at_quarter_bytes, results.rss_at_end_bytes = rss["quarter"], rss["end"]
        results.rss_at_eighths_bytes = eighths
        self.say(
            f"long run: {results.long_worker_events_per_s:,.0f} events/s; "
            f"RSS {rss['quarter'] >> 20} MiB at a quarter, {rss['end'] >> 20} MiB at the end"
        )
        self._wait_drained(topics, with_sink=False, check=check)
        self.say("stopping the worker (SIGTERM), publishing more, starting it again")
        group.stop("long-worker")
        asyncio.run(publish_all(topics.settings, topics.catalogue, log.later))
        since = time.monotonic()
        group.start_worker("long-worker")
        check = alive(group.children, self.work_dir)
        results.restart_s = first_count(lambda: card_events_decided(port), since, check, "the restarted worker")
        self.say(f"restarted worker: first card event after {results.restart_s:.1f}s")
        self._wait_drained(topics, with_sink=False, check=check)
        group.terminate_all()

    # --- helpers ---------------------------------------------------------------------------------

    def _drain_in_phases(
        self, topics: TopicSet, group: Processes, workers: list[str], preloaded: list[Message]
    ) -> tuple[Window, float]:
        """The preloaded card events drained by ``workers`` in the phases of ``in_phases``, each
        published while the workers are stopped. Returns the window over all phases (what each
        counted, over the sum of their windows: no start-up is in it) and the seconds from the
        first start to the first card event decided. The workers are left running, caught up."""
        windows, first_event_s = [], 0.0

        def decided() -> list[float]:
            return [card_events_decided(group.metrics_ports[name]) for name in workers]

        for number, (role, phase) in enumerate(zip(PHASES, in_phases(preloaded), strict=True)):
            if number:
                for name in workers:
                    group.stop(name)
            asyncio.run(publish_all(topics.settings, topics.catalogue, phase))
            self.say(f"{topics.name}: {len(workers)} worker(s) draining {len(phase):,} {role}")
            since = time.monotonic()
            for name in workers:
                group.start_worker(name)
            check = alive(group.children, self.work_dir)
            if not number:
                first_event_s = first_count(lambda: sum(decided()), since, check, topics.name)
            windows.append(watch_drain(decided, len(phase), check, topics.name))
            self._wait_drained(topics, with_sink=False, check=check)
        return Window.joined(windows), first_event_s

    def _prepare(self, name: str, log: BenchLog, cards: bool = True) -> TopicSet:
        """The topic set, its offers and account messages, and (``cards``) the preloaded card events."""
        topics = topic_set(name, self.base_env, self.run_id)
        self.say(f"{name}: topics, offers, {len(log.account_messages):,} account messages, {len(log.preloaded):,} card events")
        asyncio.run(prepare(topics, self.offers, self.codec))
        asyncio.run(preload(topics, log, cards=cards))
        return topics

    def _processes(self, topics: TopicSet) -> Processes:
        group = Processes(self.work_dir, topics.env, None, None, Report(), self.say)  # type: ignore[arg-type]  # no faults
        self.groups.append(group)
        return group

    def _wait_drained(self, topics: TopicSet, with_sink: bool, check: Callable[[], None], limit_s: float = 600.0) -> None:
        """Until the workers' (and the sink's) committed offsets reach the end of their topics."""
        settings, catalogue = topics.settings, topics.catalogue
        inputs = [t.name for t in (*catalogue.inputs(), *catalogue.account_inputs())]
        deadline = time.monotonic() + limit_s
        while not asyncio.run(drained(settings, catalogue, inputs, with_sink)):
            check()
            if time.monotonic() > deadline:
                raise BenchError(f"{topics.name}: offsets not committed to the end after {limit_s:.0f}s")
            time.sleep(0.5)

    async def _judge(self, settings: Settings, catalogue: Any) -> Correctness:
        report = Report()
        await judge(settings, catalogue, self.codec, self.book, report)
        connection = await asyncpg.connect(self.database_url)
        try:
            accounts = await connection.fetchval("SELECT count(DISTINCT account_id) FROM balances")
        finally:
            await connection.close()
        return Correctness(
            accounts=int(accounts),
            mismatched_accounts=report.mismatched_accounts,
            lost_entries=report.lost_entries,
            duplicate_entries=report.duplicate_entries,
            must_dead_letter=report.poison_total,
            dead_lettered=report.poison_in_dlq,
            notes=report.notes,
        )
