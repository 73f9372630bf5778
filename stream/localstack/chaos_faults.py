"""The chaos run's faults and the processes they hit.

``FAULTS`` is the catalogue: what happens once (or twice) during every run. ``Processes`` holds
the run's child processes, two or three workers and a sink, by name: it starts them, kills them
with -9, stops them gracefully, times a restarted worker to its first decision (read from its
metrics), starts again one that exited by itself, and does each fault, to them or to the broker
and Postgres they use. Kept apart from the run's orchestration (``stream.localstack.chaos``): a
new fault changes only this.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from stream.composition import REPO_ROOT
from stream.localstack.chaos_oracle import Report
from stream.localstack.kafka import KafkaBroker
from stream.localstack.postgres import EmbeddedPostgres
from stream.localstack.process import free_port, spawn, terminate

FAULTS = (
    "kill_worker_1",
    "kill_worker_2",
    "kill_sink",
    "kill_sink",
    "restart_worker_2",
    "third_worker",
    "broker_restart",
    "postgres_outage",
)


class Processes:
    """The run's workers and sink, each a ``python -m stream`` child with its own log, data
    directory and metrics port, and the faults done to them, the broker and Postgres."""

    def __init__(
        self,
        work_dir: Path,
        env: dict[str, str],
        broker: KafkaBroker,
        postgres: EmbeddedPostgres,
        report: Report,
        note: Callable[[str], None],
    ) -> None:
        self.work_dir = work_dir
        self.env = env
        self.broker = broker
        self.postgres = postgres
        self.report = report
        self._note = note
        self.children: dict[str, subprocess.Popen[Any]] = {}
        self.metrics_ports: dict[str, int] = {}

    # --- process control -------------------------------------------------------------------------

    def start(self, name: str, *args: str, **extra: str) -> None:
        port = self.metrics_ports.get(name)
        if port is None:  # never one a process of this group was given: it may not listen on it yet (free_ports)
            taken = set(self.metrics_ports.values())
            port = self.metrics_ports[name] = next(candidate for candidate in iter(free_port, None) if candidate not in taken)
        log = open(self.work_dir / f"{name}.log", "ab")  # noqa: SIM115 - kept by the child
        env = {**self.env, "METRICS_PORT": str(port), "WORKER_DATA_DIR": str(self.work_dir / f"{name}-data"), **extra}
        self.children[name] = spawn([sys.executable, "-m", "stream", *args], env=env, cwd=REPO_ROOT, stdout=log, stderr=log)
        log.close()

    def start_worker(self, name: str, static: bool = True) -> None:
        self.start(name, "worker", **({"WORKER_INSTANCE_ID": name} if static else {}))

    def kill(self, name: str) -> None:
        process = self.children.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self, name: str) -> None:
        terminate(self.children.pop(name), grace_s=30.0)

    def terminate_all(self) -> None:
        """Every child still running, at the end of the run whatever happened."""
        for name in list(self.children):
            terminate(self.children.pop(name), grace_s=15.0)

    def decided(self, name: str) -> float:
        """The worker's count of decided messages (0 until it serves metrics)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_ports[name]}/metrics", timeout=2).text
        except httpx.HTTPError:
            return 0.0
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("cashback_events_consumed_total{") and 'event_type="CLOCK_TICK"' not in line
        )

    def time_first_decision(self, name: str, since: float, limit_s: float = 120.0) -> None:
        while time.monotonic() - since < limit_s:
            if self.decided(name) > 0:
                self.report.recovery_s[f"{name} #{len(self.report.recovery_s) + 1}"] = time.monotonic() - since
                return
            time.sleep(0.2)
        self.report.recovery_s[f"{name} #{len(self.report.recovery_s) + 1}"] = limit_s
        self._note(f"{name} decided nothing within {limit_s:.0f}s")

    # --- faults ----------------------------------------------------------------------------------

    def check_alive(self) -> None:
        """A process that exited by itself is a failure of the run (and is started again)."""
        for name, process in list(self.children.items()):
            if process.poll() is not None:
                self.report.crashed.append(f"{name}(exit {process.returncode})")
                self._note(f"{name} exited by itself with {process.returncode}; starting it again")
                del self.children[name]
                if name == "sink":
                    self.start("sink", "sink")
                else:
                    self.start_worker(name, static=name != "worker-3")

    def fault(self, kind: str) -> None:
        self.check_alive()
        self._note(kind)
        if kind in ("kill_worker_1", "kill_worker_2"):
            name = "worker-1" if kind.endswith("1") else "worker-2"
            self.kill(name)
            since = time.monotonic()
            self.start_worker(name)
            self.time_first_decision(name, since)
        elif kind == "restart_worker_2":
            self.stop("worker-2")
            since = time.monotonic()
            self.start_worker("worker-2")
            self.time_first_decision("worker-2", since)
        elif kind == "kill_sink":
            self.kill("sink")
            self.start("sink", "sink")
        elif kind == "third_worker":
            since = time.monotonic()
            self.start_worker("worker-3", static=False)  # dynamic: it leaves the group when it stops
            self.time_first_decision("worker-3", since)
            time.sleep(5)
            self._note("worker-3 leaves")
            self.stop("worker-3")
        elif kind == "broker_restart":
            self.broker.stop()
            self.broker.start()
        elif kind == "postgres_outage":
            self.postgres.stop()
            time.sleep(10)
            self.postgres.start()
        self._note(f"{kind} done")
