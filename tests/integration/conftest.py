"""Integration fixtures: one real Kafka broker and one real Postgres per test session.

They are started by the tests themselves (never skipped): KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL
point the tests at existing servers instead. The balance API of every test trusts one signing key,
made for the session (``API_KEY``, never written outside the session's directories); ``api_headers``
mints a bearer token with it.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from stream.auth import OPERATIONS
from stream.localstack.kafka import DEFAULT_CACHE_DIR, KafkaBroker
from stream.localstack.postgres import EmbeddedPostgres
from stream.localstack.process import child_preexec, free_port, spawn, terminate
from stream.localstack.tokens import SigningKey, mint, write_jwks
from stream.store.journal import write_batch

REPO_ROOT = Path(__file__).resolve().parents[2]
API_ISSUER = "cashback-integration-tests"
API_AUDIENCE = "cashback-api"
API_KEY = SigningKey.generate("ES256")


def api_token(
    scopes: Iterable[str] = (OPERATIONS,), accounts: Iterable[str] | None = None, *, key: SigningKey = API_KEY, **options: Any
) -> str:
    """A bearer token the tests' APIs accept (an operations token unless told otherwise); ``options``
    override ``mint``'s arguments (issuer, audience, ttl_s, now) or add claims."""
    arguments: dict[str, Any] = {"issuer": API_ISSUER, "audience": API_AUDIENCE, "ttl_s": 600, **options}
    return mint(key, scopes=scopes, accounts=accounts, **arguments)


def api_headers(scopes: Iterable[str] = (OPERATIONS,), accounts: Iterable[str] | None = None, **options: Any) -> dict[str, str]:
    """The Authorization header of ``api_token``."""
    return {"Authorization": f"Bearer {api_token(scopes, accounts, **options)}"}


def api_auth_env(directory: Path) -> dict[str, str]:
    """The API settings that make it trust ``API_KEY`` (its JWKS written to ``directory``)."""
    jwks = directory / "jwks.json"
    write_jwks(jwks, [API_KEY])
    return {"API_AUTH_JWKS": str(jwks), "API_AUTH_ISSUER": API_ISSUER, "API_AUTH_AUDIENCE": API_AUDIENCE}


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: the Postgres server runs as another user, and pytest resets the
    # permissions of its own temporary root at every session start.
    path = Path(tempfile.mkdtemp(prefix="cashback-it-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(work_dir: Path) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    with KafkaBroker(DEFAULT_CACHE_DIR, work_dir / "kafka") as broker:
        yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def postgres_url(work_dir: Path) -> Iterator[str]:
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    with EmbeddedPostgres(work_dir / "postgres", fast=True) as server:
        yield server.dsn


async def one_partition_topic(bootstrap: str, prefix: str) -> str:
    """A new topic of one partition, named ``<prefix>-<random>``."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    return topic


def fresh_database(server_url: str) -> str:
    """A new empty database on the server, so each module starts from a clean ledger."""
    name = f"it_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        connection = await asyncpg.connect(server_url)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(create())
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


async def explained_write(connection: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> list[str]:
    """``write_batch`` of ``rows`` with the plan of every statement it ran, its triggers' too (auto_explain,
    as notices): what the planner chose for the tables as they are."""
    notices: list[str] = []
    connection.add_log_listener(lambda _, message: notices.append(message.message))
    await connection.execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
        " SET auto_explain.log_level = 'notice'"
    )
    await write_batch(connection, rows)
    await connection.fetchval("SELECT 1")  # the notices of the batch's transaction are in
    return notices


def _limited_files(file_bytes: int) -> None:
    child_preexec()
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))


class Processes:
    """The project's processes, started as real subprocesses with their own environment."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.children: dict[str, object] = {}
        self.metrics_ports: dict[str, int] = {}

    def cli(self, *args: str, timeout_s: float = 120.0) -> str:
        import subprocess

        result = subprocess.run(
            [sys.executable, "-m", "stream", *args],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        assert result.returncode == 0, f"cashback {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None, file_bytes: int | None = None, module: str = "stream"
    ) -> None:
        """``file_bytes``: the most any file the process writes may hold (``RLIMIT_FSIZE``): a write past it
        fails with EFBIG as one on a full disk fails with ENOSPC (Python ignores the SIGXFSZ that comes with it).
        ``module``: what ``python -m`` runs (a test's fault injected around the command line)."""
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - kept by the child
        self.children[name] = spawn(
            [sys.executable, "-m", module, *args],
            env={**self.env, **(env or {})},
            cwd=REPO_ROOT,
            stdout=log,
            stderr=log,
            preexec_fn=child_preexec if file_bytes is None else partial(_limited_files, file_bytes),
        )
        log.close()

    def stop(self, name: str) -> None:
        process = self.children.pop(name)
        terminate(process, grace_s=15.0)  # type: ignore[arg-type]

    def kill_in_the_middle(self, decided: dict[str, str], at_least: float, total: float) -> None:
        """kill -9 the worker once it counts ``at_least`` events ``decided`` (``consumed``'s labels), polled every
        20 ms, asserting it had not counted ``total`` (else nothing was cut); then start it again as a
        supervisor would, with the same settings and metrics port."""
        seen = wait_until(
            lambda: (n := self.consumed(**decided)) >= at_least and n, 120, f"the worker to decide {decided}", interval_s=0.02
        )
        worker = self.children.pop("worker")
        worker.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
        worker.wait(timeout=30)  # type: ignore[attr-defined]
        assert seen < total, f"the worker decided all {seen:.0f} {decided} before the kill: nothing was cut"
        self.start("worker", "worker", env={"METRICS_PORT": str(self.metrics_ports["worker"])})

    def stop_all(self) -> None:
        for name in list(self.children):
            self.stop(name)

    def metric(self, name: str, sample: str, labels: dict[str, str] | None = None) -> float | None:
        """The sum of the samples of a process's /metrics matching ``labels`` (None when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"http://127.0.0.1:{self.metrics_ports[name]}/metrics", timeout=5).text
        values = [
            found.value
            for family in text_string_to_metric_families(text)
            for found in family.samples
            if found.name == sample and all(found.labels.get(k) == v for k, v in (labels or {}).items())
        ]
        return sum(values) if values else None

    def consumed(self, name: str = "worker", **labels: str) -> float:
        """The events a worker counted as decided (``cashback_events_consumed_total`` with ``labels``): 0 until it serves metrics."""
        try:
            return self.metric(name, "cashback_events_consumed_total", labels) or 0.0
        except httpx.HTTPError:  # not serving yet
            return 0.0

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-20000:] if path.exists() else ""


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.25, observe=None):  # type: ignore[no-untyped-def]
    """Poll ``condition`` until true; on time-out say what ``observe()`` (if given) saw last."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(interval_s)
    seen = f"; last seen: {observe()!r}" if observe else ""
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{seen}")


def records_of(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one query, on a connection of its own."""

    async def read() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(database_url)
        try:
            return list(await connection.fetch(query, *args))
        finally:
            await connection.close()

    return asyncio.run(read())


def rows_of(database_url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """The rows of one query, each as a tuple."""
    return [tuple(row) for row in records_of(database_url, query, *args)]


def wait_for_each(read: Callable[[], list[Any]], expected: Any, count: int, what: str, timeout_s: float = 180) -> None:
    """Until ``count`` of the rows ``read()`` returns are ``expected`` (each account's balance, say), polled every
    second; a time-out says the three commonest rows seen last."""
    wait_until(
        lambda: read().count(expected) == count, timeout_s, what, interval_s=1.0, observe=lambda: Counter(read()).most_common(3)
    )


def api_ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def isolated_env(kafka_bootstrap: str, postgres_url: str, log_dir: Path, name: str, **extra: str) -> dict[str, str]:
    """Settings for processes of their own: fresh topics, group ids and database, and an API that
    trusts the session's key."""
    run_id = log_dir.name
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DATABASE_URL": fresh_database(postgres_url),
        "TOPIC_PREFIX": f"{name}-{run_id}.",
        "APP_ID": f"cashback-{name}-{run_id}",
        "SINK_GROUP_ID": f"cashback-sink-{name}-{run_id}",
        "SINK_BATCH_WAIT_MS": "50",
        "WORKER_DATA_DIR": str(log_dir / "worker"),
        "PYTHONUNBUFFERED": "1",
        **api_auth_env(log_dir),
        **extra,
    }


@contextmanager
def running_pipeline(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    postgres_url: str,
    work_dir: Path,
    name: str,
    offers_file: Path | None = None,
    **extra_env: str,
) -> Iterator[tuple[Processes, str]]:
    """Worker, sink and API running against fresh topics and a fresh database; yields
    (processes, API base URL). Their logs are printed when a test using them failed."""
    log_dir = work_dir / f"{name}-{uuid.uuid4().hex[:8]}"
    log_dir.mkdir()
    api_port = free_port()
    processes = Processes(
        isolated_env(kafka_bootstrap, postgres_url, log_dir, name, API_PORT=str(api_port), **extra_env), log_dir
    )
    processes.cli("topics")
    if offers_file is not None:
        processes.cli("offers", "load", str(offers_file))
    processes.metrics_ports = {"worker": free_port(), "sink": free_port()}
    processes.start("worker", "worker", env={"METRICS_PORT": str(processes.metrics_ports["worker"])})
    processes.start("sink", "sink", env={"METRICS_PORT": str(processes.metrics_ports["sink"])})
    processes.start("api", "api")
    base_url = f"http://127.0.0.1:{api_port}"
    failed_before = request.session.testsfailed
    raised = False
    try:
        wait_until(lambda: api_ready(base_url), 60, "the API to be ready")
        yield processes, base_url
    except BaseException:
        raised = True
        raise
    finally:
        processes.stop_all()
        if raised or request.session.testsfailed > failed_before:
            for process in ("worker", "sink", "api"):
                print(f"--- {process} log (tail) ---\n{processes.log(process)}")


@pytest.fixture(scope="module")
def pipeline(
    request: pytest.FixtureRequest, kafka_bootstrap: str, postgres_url: str, work_dir: Path
) -> Iterator[tuple[Processes, str]]:
    """The whole pipeline with the offers of tests/integration/offers.yaml, its clock ticking fast."""
    with running_pipeline(
        request,
        kafka_bootstrap,
        postgres_url,
        work_dir,
        "it",
        REPO_ROOT / "tests" / "integration" / "offers.yaml",
        CLOCK_INTERVAL_S="0.5",
        RECONCILE_INTERVAL_S="1",
    ) as running:
        yield running
