"""The ports the local stack hands its servers (``stream.localstack.process.free_ports``): picked at
once, so never the same port twice, even for servers that bind them only seconds later (the stack's
Prometheus once took the API's port while the API was still starting)."""

from __future__ import annotations

import socket

from stream.localstack.process import free_port, free_ports


def test_ports_picked_together_are_all_different_and_free() -> None:
    ports = free_ports(64)
    assert len(set(ports)) == 64
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:  # free: a server can bind one
        server.bind(("127.0.0.1", ports[0]))
    assert 0 < free_port() < 65536
