"""Helpers for launching local-stack child processes that never outlive Python.

``child_preexec`` is meant as ``preexec_fn`` for :class:`subprocess.Popen`: on Linux it
asks the kernel to SIGKILL the child when its parent dies (``PR_SET_PDEATHSIG``), so a
broker or database started by a test run goes away even if the run is ``kill -9``-ed.

Gotcha: the kernel ties PDEATHSIG to the *thread* that forked the child, not to the
process. A child spawned from a short-lived thread (``asyncio.to_thread``, an executor
that is shut down, ...) is killed as soon as that thread exits. :func:`spawn` avoids
that by always forking from one long-lived daemon thread, so the child dies exactly
when the Python process does.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["child_preexec", "free_port", "free_ports", "spawn", "terminate"]

_PR_SET_PDEATHSIG = 1

# Resolve prctl in the parent: the code that runs between fork and exec must not load
# libraries or take locks.
_prctl: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _prctl = _libc.prctl
        _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        _prctl.restype = ctypes.c_int
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        _prctl = None


def child_preexec() -> None:
    """``preexec_fn`` for Popen: SIGKILL this child when its parent dies (Linux only).

    Use together with ``start_new_session=True`` (so a Ctrl-C in the terminal reaches
    only Python, which then stops its children in order). No-op off Linux.
    """
    if _prctl is None:
        return
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died between fork() and prctl(): then we were already
    # re-parented (to init or a subreaper) and would never get the signal.
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGKILL)


_spawn_queue: queue.SimpleQueue[tuple[Callable[[], subprocess.Popen[Any]], Future[subprocess.Popen[Any]]]] = queue.SimpleQueue()
_spawn_thread: threading.Thread | None = None
_spawn_lock = threading.Lock()


def _spawn_loop() -> None:
    while True:
        make, fut = _spawn_queue.get()
        if not fut.set_running_or_notify_cancel():
            continue
        try:
            fut.set_result(make())
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            fut.set_exception(exc)


def spawn(args: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **popen_kwargs)`` for a child that dies with this process.

    Adds ``preexec_fn=child_preexec`` and ``start_new_session=True`` (unless given) and
    forks from a dedicated daemon thread that lives as long as the interpreter, so
    the calling thread may exit without taking the child with it.
    """
    global _spawn_thread
    popen_kwargs.setdefault("preexec_fn", child_preexec)
    popen_kwargs.setdefault("start_new_session", True)
    with _spawn_lock:
        if _spawn_thread is None or not _spawn_thread.is_alive():
            _spawn_thread = threading.Thread(target=_spawn_loop, name="localstack-spawner", daemon=True)
            _spawn_thread.start()
    fut: Future[subprocess.Popen[Any]] = Future()
    _spawn_queue.put((lambda: subprocess.Popen(args, **popen_kwargs), fut))
    return fut.result()


def terminate(proc: subprocess.Popen[Any], grace_s: float = 10.0) -> int | None:
    """SIGTERM ``proc``, SIGKILL it after ``grace_s`` seconds; reap it. Idempotent."""
    if proc.poll() is None:
        try:
            proc.terminate()
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        except ProcessLookupError:  # pragma: no cover - raced with its exit
            pass
    return proc.wait()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it), for a server started next."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports free on 127.0.0.1 now, all different: each is held while the next is
    picked. Ports picked one at a time, for servers that bind them only later, can come back twice
    (the OS hands out a port again once its probe is closed): the local stack's Prometheus once took
    the API's port while the API was still starting, and the API stopped."""
    import socket

    with contextlib.ExitStack() as held:
        probes = [held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
