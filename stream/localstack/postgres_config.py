"""How the embedded server is configured and reached: its settings, and connecting to it as the superuser.

The server listens on 127.0.0.1 (and a Unix socket in the data dir when the path is short
enough); clients log in as :data:`~stream.localstack.postgres_cluster.SUPERUSER` with its password
(SCRAM-SHA-256, as production does) and no TLS (the wheel's server is built without OpenSSL). Readiness means a real asyncpg
connection, which also creates the application's database when it is missing. Apart from
:class:`~stream.localstack.postgres.EmbeddedPostgres` because these change with Postgres's
settings and its clients, not with how the server process is started and stopped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

from stream.localstack.postgres_cluster import SUPERUSER, bin_dir

__all__ = ["port_in_use", "run_sync", "server_args", "wait_ready"]

# Embedded Postgres's one logger: these lines kept the name they had before postgres.py was split.
log = logging.getLogger("stream.localstack.postgres")

# sun_path is 108 bytes including the NUL; postgres appends "/.s.PGSQL.NNNNN".
_MAX_SOCKET_PATH = 107


def server_args(data_dir: Path, port: int, *, fast: bool) -> list[str]:
    """The ``postgres`` command line; ``fast`` turns off fsync, synchronous_commit and full_page_writes."""
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": _socket_dir(data_dir),
        "unix_socket_permissions": "0700",
        # DSM segments as files under pg_dynshmem/ instead of /dev/shm: nothing
        # leaks outside the data dir after a kill -9, and a small /dev/shm
        # (64 MB in many containers) is no limit.
        "dynamic_shared_memory_type": "mmap",
        "logging_collector": "off",
        # Passwords set later (ALTER ROLE ... PASSWORD) are stored as SCRAM verifiers too, never MD5.
        "password_encryption": "scram-sha-256",
    }
    if fast:
        settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
    args = [str(bin_dir() / "postgres"), "-D", str(data_dir)]
    for key, value in settings.items():
        args += ["-c", f"{key}={value}"]
    return args


def _socket_dir(data_dir: Path) -> str:
    if len(str(data_dir)) + len("/.s.PGSQL.65535") > _MAX_SOCKET_PATH:
        log.warning("data dir path too long for a Unix socket; TCP only: %s", data_dir)
        return ""
    return str(data_dir)


def port_in_use(log_tail: str) -> bool:
    """True when the server log says the port could not be bound (another process took it)."""
    return "Address already in use" in log_tail or "could not bind" in log_tail


async def wait_ready(
    proc: subprocess.Popen[bytes], port: int, database: str, deadline: float, password: str
) -> tuple[str, object]:
    """Connect (as the superuser, with ``password``) until the server answers, then create ``database`` if it is missing.

    Returns ``("ok", None)``, ``("exited", returncode)`` when ``proc`` died first,
    ``("refused", error)`` when it refused the password, or ``("timeout", last_error)`` at ``deadline``.
    """
    import asyncpg

    last_error: object = None
    while True:
        if proc.poll() is not None:
            return "exited", proc.returncode
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout", last_error
        attempt = asyncio.ensure_future(
            asyncpg.connect(
                host="127.0.0.1",
                port=port,
                user=SUPERUSER,
                database="postgres",
                password=password,  # never ~/.pgpass
                ssl=False,  # the wheel's server is built without OpenSSL
                timeout=min(5.0, remaining),
            )
        )
        # Keep watching the process while connecting: if postgres died, what
        # answers on the port (if anything) is not our server.
        while not attempt.done() and proc.poll() is None:
            await asyncio.wait({attempt}, timeout=0.05)
        if not attempt.done():
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
            continue
        try:
            conn = attempt.result()
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
            return "refused", exc  # the server is up and says no: waiting will not change that
        except Exception as exc:  # noqa: BLE001 - refused / starting up / reset: retry
            last_error = exc
            await asyncio.sleep(0.05)
            continue
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
            if not exists:
                quoted = '"' + database.replace('"', '""') + '"'
                try:
                    await conn.execute(f"CREATE DATABASE {quoted}")
                except asyncpg.DuplicateDatabaseError:
                    pass
        finally:
            await conn.close()
        return "ok", None


def run_sync(coro: Any) -> Any:
    """asyncio.run, also when this thread already has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
