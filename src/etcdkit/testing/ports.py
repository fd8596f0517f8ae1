"""Loopback ports for test servers: only 127.0.0.1 is ever used."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["HOST", "free_port"]

HOST = "127.0.0.1"

_given_ports: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free loopback port *below* the kernel's ephemeral range.

    A port from ``bind(0)`` comes from the ephemeral range, where any outgoing connection may
    take it between our check and etcd's bind (seen in practice under load). Ports below that
    range are only taken by listeners; each one is handed out once per process.
    """
    lo, _hi = _ephemeral_range()
    rng = random.Random()
    if lo > 12000:
        for _ in range(200):
            port = rng.randrange(10000, lo)
            if port in _given_ports:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((HOST, port))
                except OSError:
                    continue
            _given_ports.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])
