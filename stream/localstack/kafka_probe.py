"""Whether a starting broker is ready yet: its port, a real metadata round trip, its log's tail.

Used by :class:`~stream.localstack.kafka.KafkaBroker` while it waits for either backend (java or
Tansu). Apart from the broker class because these are client-side checks: they change with
aiokafka, not with how the broker process is run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["broker_answers", "log_tail", "tcp_open"]

# The broker's one logger: these lines kept the name they had before kafka.py was split.
log = logging.getLogger("stream.localstack.kafka")


def log_tail(path: Path, n: int = 40) -> str:
    """The last ``n`` lines of the broker log at ``path``, for an error message."""
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=n))
    except OSError as exc:
        return f"<no log: {exc}>"


def tcp_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def _describe_cluster(bootstrap: str, timeout_s: float) -> dict[str, Any]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(1000, int(timeout_s * 1000)),
        client_id="localstack-probe",
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        return await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def broker_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """A real Metadata round trip with aiokafka; True when a broker is listed.

    Runs on its own thread with its own event loop, so it works whether or not the
    caller is inside a running loop.
    """
    result: list[bool] = [False]

    def run() -> None:
        try:
            info = asyncio.run(_describe_cluster(bootstrap, timeout_s))
            result[0] = bool(info.get("brokers"))
        except Exception as exc:  # noqa: BLE001 - not ready yet
            log.debug("broker probe failed: %r", exc)

    t = threading.Thread(target=run, name="kafka-probe", daemon=True)
    t.start()
    t.join(timeout_s * 2 + 5)
    return result[0]
