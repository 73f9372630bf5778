"""The postmaster as a child process: forked from a lasting thread, stopped in order, reaped.

``postgres`` runs as a direct child of this Python process with ``PR_SET_PDEATHSIG=SIGKILL``, so it
dies with its parent even after a ``kill -9``. Forking it, shutting it down (fast, then immediate,
then SIGKILL) with its backends, and waiting out a killed predecessor that is still a zombie are
kept here, apart from :class:`~stream.localstack.postgres.EmbeddedPostgres`, because they change
with how processes behave on the host (threads, signals, init's reaping), not with Postgres's
settings or the cluster on disk.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["shut_down", "spawn_from_lasting_thread", "wait_for_dead_postmaster"]

# Embedded Postgres's one logger: these lines kept the name they had before postgres.py was split.
log = logging.getLogger("stream.localstack.postgres")


def wait_for_dead_postmaster(data_dir: Path, deadline: float) -> None:
    """Wait until a killed previous postmaster of ``data_dir`` has been reaped.

    After a kill -9 the old postmaster is a zombie until init reaps it, and
    postgres takes a zombie's PID in postmaster.pid for a live server
    ("lock file postmaster.pid already exists").  Some init processes
    (this sandbox's PID 1 among them) reap only about once a second.
    """
    import psutil

    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return  # alive (postgres will refuse, with a clear message) or reused
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)


def shut_down(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Fast shutdown (SIGINT, ``timeout_s``), then immediate (SIGQUIT), then SIGKILL; reap all."""
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


def spawn_from_lasting_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` (which forks a child) on the main thread, or else on a daemon thread that lives as long as Python."""
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
