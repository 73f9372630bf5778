"""The chaos run (``make chaos``): the pipeline on the local stack while an operator's bad day
happens to it, then every message accounted for against the pure engine.

Seeded and reproducible (``CHAOS_SEED``, ``CHAOS_EVENTS``, ``CHAOS_POISON``):

1. a real broker and Postgres (fixed ports, so they can be restarted), two workers with static
   group membership and a sink;
2. a simulated event log (``stream.localstack.chaos_log``: the simulator's lifecycle mix) with re-sent events, conflicting
   duplicates and poison messages (undecodable, unknown schema, invalid fields, a card number, a
   wrong key, one message of 1.04 MB);
3. while it is published, at seeded points of the stream: kill -9 of each worker and twice of the
   sink, a graceful restart of a worker, a third worker joining and leaving (a rebalance), a
   broker restart and a 10 s Postgres outage; each worker restart is timed to its first decision;
4. the pipeline drains (committed offsets reach the end of every topic);
5. the oracle (``stream.localstack.chaos_oracle``): the log read back from the broker, each
   account's card events run through the pure engine in the order its worker decided them (the
   two input topics have no common order), compared with Postgres.

It prints a table and one line
``chaos N events: mismatched_accounts=M duplicate_entries=D poison_in_dlq=P/T lost_entries=L recovery_s=R``
and exits 0 only with M=0, D=0, P=T, L=0 and R within the restart target. Campaign budgets are
left out of the offers (a budget makes one account's reward depend on other accounts' order,
which the oracle cannot know); the log's timeline is moved years ahead so that the workers'
clock ticks make nothing fall due (time passing has its own tests).

This module is the run's orchestration and its command line. Beside it: the fault catalogue and
the child processes the faults hit (``stream.localstack.chaos_faults``), the run's own Kafka
clients, publishing the log and telling when the pipeline has drained
(``stream.localstack.chaos_clients``), the log (``chaos_log``) and the judgement (``chaos_oracle``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from schemas.codec import Codec
from stream.composition import REPO_ROOT, System
from stream.core.offers import OfferBook
from stream.localstack.chaos_clients import drained, publish_accounts, publish_cards
from stream.localstack.chaos_faults import FAULTS, Processes
from stream.localstack.chaos_log import chaos_log, chaos_offers
from stream.localstack.chaos_oracle import Report, judge
from stream.localstack.kafka import DEFAULT_CACHE_DIR, KafkaBroker
from stream.localstack.postgres import EmbeddedPostgres
from stream.localstack.process import free_port
from stream.offer_admin import publish_offers

__all__ = ["FAULTS", "Chaos", "main"]


class Chaos:
    def __init__(self, events: int, seed: int, poison: int, work_dir: Path, log: Any = print) -> None:
        self.events_wanted = events
        self.seed = seed
        self.poison = poison
        self.work_dir = work_dir
        self.say = log
        self.rng = random.Random(seed)
        self.codec = Codec()
        self.report = Report()
        self.processes: Processes | None = None  # once the broker and Postgres are up
        self.started = time.monotonic()
        self.broker: KafkaBroker | None = None
        self.postgres: EmbeddedPostgres | None = None

    # --- the stack -------------------------------------------------------------------------------

    def _note(self, what: str) -> None:
        at = time.monotonic() - self.started
        self.report.timeline.append((at, what))
        self.say(f"[{at:7.1f}s] {what}", flush=True)

    def _env(self, bootstrap: str, database_url: str) -> dict[str, str]:
        run = f"chaos-{self.seed}-{os.getpid()}"
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "DATABASE_URL": database_url,
            "TOPIC_PREFIX": f"{run}.",
            "APP_ID": run,
            "SINK_GROUP_ID": f"{run}-sink",
            # Workers tick every second (a tick is a decision: a restarted worker shows it processes
            # again even when no card event is due for its partitions), but the log's timeline is
            # years ahead (FUTURE), so nothing falls due while the run lasts.
            "CLOCK_INTERVAL_S": "1",
            "EVENT_AHEAD_LIMIT_DAYS": "off",  # that timeline is dated years ahead of the workers' clock on purpose
            # Eight partitions: with four, Faust's sticky assignor keeps two on each of the first
            # two workers and gives a third nothing; with eight, partitions (and their table state)
            # really move to the third worker and back when it leaves.
            "TOPIC_PARTITIONS": "8",
            "PYTHONUNBUFFERED": "1",
        }

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> Report:
        self.broker = KafkaBroker(DEFAULT_CACHE_DIR, self.work_dir / "kafka", port=free_port())
        self.postgres = EmbeddedPostgres(self.work_dir / "postgres", port=free_port(), fast=True)
        try:
            bootstrap = self.broker.start()
            database_url = self.postgres.start()
            self.env = self._env(bootstrap, database_url)
            system = System.from_env(self.env)
            self.settings, self.topics = system.settings, system.catalogue
            self.processes = Processes(self.work_dir, self.env, self.broker, self.postgres, self.report, self._note)
            self._prepare()
            return self._run_stream(self.processes)
        finally:
            if self.processes is not None:
                self.processes.terminate_all()
            self.postgres.stop()
            self.broker.stop()

    def _prepare(self) -> None:
        subprocess.run([sys.executable, "-m", "stream", "topics"], env=self.env, cwd=REPO_ROOT, check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "stream", "migrate"], env=self.env, cwd=REPO_ROOT, check=True, capture_output=True)
        offers = chaos_offers()
        self.book = OfferBook.of(offers)
        asyncio.run(publish_offers(self.settings, self.codec, self.topics.offers.name, offers))
        log = chaos_log(self.seed, self.events_wanted, self.poison, self.topics.authorizations.partitions, self.codec)
        self.account_messages, self.card_messages = log.account_messages, log.card_messages
        self.report.events = len(self.card_messages)

    def _run_stream(self, processes: Processes) -> Report:
        processes.start("sink", "sink")
        processes.start_worker("worker-1")
        processes.start_worker("worker-2")
        self._note(f"publishing {len(self.account_messages)} account messages, then {len(self.card_messages)} card events")
        asyncio.run(publish_accounts(self.settings, self.topics, self.account_messages))
        self._wait_drained([self.topics.profiles.name, self.topics.activations.name], with_sink=False, limit_s=180)

        faults = list(FAULTS)
        self.rng.shuffle(faults)
        points = sorted(self.rng.uniform(0.08, 0.85) for _ in faults)
        schedule = list(zip(points, faults, strict=True))
        published = [0]
        done_faults = threading.Event()
        total = len(self.card_messages)
        # Faults fire at seeded points of the stream; publication waits for a fault to be over
        # (and, for a restart, timed) so that the stream still flows after each one.
        gate = threading.Condition()
        faults_started = [0]

        def faults_loop() -> None:
            try:
                for point, kind in schedule:
                    reached = functools.partial(lambda at: published[0] >= at * total, point)
                    with gate:
                        gate.wait_for(reached)
                        faults_started[0] += 1
                    processes.fault(kind)
            finally:
                done_faults.set()
                with gate:
                    faults_started[0] = len(schedule)
                    gate.notify_all()

        def allowed(n: int) -> bool:
            # Events flow while a fault runs (a restarted worker needs some to decide), up to a
            # little past the next fault's point, which waits for this one to be over.
            pending = [p for p, _ in schedule[faults_started[0] :]]
            return not pending or n < pending[0] * total + max(100, total // 50)

        thread = threading.Thread(target=faults_loop, name="chaos-faults", daemon=True)
        thread.start()
        rate = min(2_000.0, max(50.0, total / 150.0))  # two and a half minutes, never under 50 events a second
        asyncio.run(publish_cards(self.settings, self.topics, self.card_messages, published, gate, allowed, rate, self.say))
        done_faults.wait()
        self._note("published; waiting for the pipeline to drain")
        inputs = [
            self.topics.authorizations.name,
            self.topics.settlements.name,
            self.topics.profiles.name,
            self.topics.activations.name,
        ]
        processes.check_alive()
        self._wait_drained(inputs, with_sink=True, limit_s=max(300.0, total / 100))
        self._note("drained")
        processes.check_alive()
        for name in list(processes.children):
            processes.stop(name)
        asyncio.run(judge(self.settings, self.topics, self.codec, self.book, self.report))
        return self.report

    def _wait_drained(self, input_topics: list[str], with_sink: bool, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if asyncio.run(drained(self.settings, self.topics, input_topics, with_sink)):
                return
            time.sleep(1)
        self.report.stuck.append(f"{'+'.join(input_topics)}@{limit_s:.0f}s")
        self._note(f"NOT DRAINED after {limit_s:.0f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=int, default=int(os.environ.get("CHAOS_EVENTS", "200000")), help="card events to publish (CHAOS_EVENTS)"
    )
    parser.add_argument(
        "--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "1")), help="seed of the log and the faults (CHAOS_SEED)"
    )
    parser.add_argument(
        "--poison", type=int, default=int(os.environ.get("CHAOS_POISON", "50")), help="poison messages (CHAOS_POISON)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs, data)")
    args = parser.parse_args(argv)
    if args.events < 100 or args.poison < 1:
        parser.error("--events must be at least 100 and --poison at least 1")
    # The harness's own clients retry through the broker restart; their per-attempt logs are noise.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    work_dir = Path(tempfile.mkdtemp(prefix="cashback-chaos-"))
    work_dir.chmod(0o755)
    report = Report()
    try:
        report = Chaos(args.events, args.seed, args.poison, work_dir).run()
        print(report.table())
        print(report.line(), flush=True)
    finally:
        if args.keep:
            print(f"run directory kept: {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    raise SystemExit(0 if report.passed() else 1)


if __name__ == "__main__":
    main()
