"""The local stack (``python -m stream local``) run as a child process, for as long as a ``with``
block: its banner read for the API's and Prometheus's addresses, Ctrl-C sent at the end (the stack
then stops everything it started)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from stream.composition import REPO_ROOT
from stream.localstack.stack import READY_LINE


class StackError(RuntimeError):
    """The stack did not come up, or came up without Prometheus."""


@dataclass
class RunningStack:
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    prometheus_url: str | None = None
    api_url: str = ""

    def text(self) -> str:
        return "".join(self.output)


def _read(stack: RunningStack) -> None:
    assert stack.process.stdout is not None
    for line in iter(stack.process.stdout.readline, ""):
        stack.output.append(line)


@contextmanager
def local_stack(
    args: Sequence[str] = (), start_timeout_s: float = 180.0, env: dict[str, str] | None = None
) -> Iterator[RunningStack]:
    """Start ``python -m stream local *args`` and yield once its banner is printed; stop it after."""
    process = subprocess.Popen(
        [sys.executable, "-m", "stream", "local", *args],
        cwd=REPO_ROOT,
        env=dict(os.environ) if env is None else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stack = RunningStack(process)
    reader = threading.Thread(target=_read, args=(stack,), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while READY_LINE not in stack.text() or "Ctrl-C stops everything" not in stack.text():
            if process.poll() is not None:
                raise StackError(f"the local stack exited with code {process.returncode}:\n{stack.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise StackError(f"the local stack did not start in {start_timeout_s:.0f}s:\n{stack.text()[-3000:]}")
            time.sleep(0.2)
        found = re.search(r"prometheus\s+(http://127\.0\.0\.1:\d+)", stack.text())
        stack.prometheus_url = found.group(1) if found else None
        api = re.search(r"balance API\s+(http://127\.0\.0\.1:\d+)", stack.text())
        stack.api_url = api.group(1) if api else ""
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
