"""tests/ports.py: free ports for servers in other processes."""

from __future__ import annotations

import socket

from tests.ports import _ephemeral_start, free_port


def test_a_free_port_can_be_bound_and_is_below_the_ephemeral_range() -> None:
    port = free_port()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    if _ephemeral_start() > 11_000:
        assert port < _ephemeral_start()


def test_a_port_in_use_is_not_given() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        used = taken.getsockname()[1]
        assert all(free_port() != used for _ in range(200))
