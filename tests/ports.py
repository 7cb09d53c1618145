"""A free TCP port on 127.0.0.1 for a server a test starts in another process.

A port the kernel hands out for ``bind(("127.0.0.1", 0))`` comes from its
ephemeral range, which every outgoing connection of every test process also
draws from: between the check and the server's own bind (a second or two for
a subprocess to start), a connection elsewhere may take it. Ports below that
range are never handed out that way, so only another test choosing the same
port at the same moment could take one; they are chosen at random.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port"]

# Below this, ports are left to system services.
_LOWEST = 10_000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default, and within what other systems use


def free_port() -> int:
    """A port nothing listens on now, outside the kernel's ephemeral range when it can be."""
    start = _ephemeral_start()
    if start - _LOWEST >= 1_000:
        for _ in range(50):
            port = random.randrange(_LOWEST, start)
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
