"""The worker's and the sink's /metrics listen on loopback unless METRICS_HOST opens them wider."""

from __future__ import annotations

import psutil
import pytest

from stream import metrics
from stream.localstack.process import free_port
from stream.settings import Settings


def _listening_addresses(port: int) -> set[str]:
    return {
        connection.laddr.ip
        for connection in psutil.Process().net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
    }


def test_the_default_host_is_loopback_for_metrics_and_the_api() -> None:
    settings = Settings.from_env({})
    assert (settings.metrics_host, settings.api_host) == ("127.0.0.1", "127.0.0.1")


@pytest.mark.parametrize(("host", "expected"), [(None, {"127.0.0.1"}), ("0.0.0.0", {"0.0.0.0"})])
def test_metrics_listen_only_where_told(host: str | None, expected: set[str]) -> None:
    port = free_port()
    settings = Settings.from_env({"METRICS_PORT": str(port), **({"METRICS_HOST": host} if host else {})})
    server = metrics.serve(settings.metrics_port, settings.metrics_host)
    try:
        assert _listening_addresses(port) == expected
    finally:
        server.shutdown()
        server.server_close()


def test_no_port_no_server() -> None:
    assert metrics.serve(0) is None
