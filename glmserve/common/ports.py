"""Ports picked now and bound later, by another process, without anyone taking them meanwhile.

Asking the kernel for a free port (bind to port 0) hands out one from the ephemeral range, the
same range every later `bind(0)` and outgoing connection draws from. Ray starts dozens of
gRPC servers and connections between the pick and the bind (`glmserve up` picks the proxy's
port before `ray.init`), so now and then one of them takes the port first and the proxy fails
with "Failed to bind". A port below the ephemeral range is only ever taken by a process that
asks for it by number.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Ray's workers bind explicitly in 10002-19999 (`min_worker_port`/`max_worker_port` defaults).
LOW = 20000
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_TRIES = 64


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; other systems keep theirs higher still


def probe(host: str) -> socket.socket:
    """An unbound TCP socket of `host`'s address family."""
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)


def _bindable(host: str, port: int) -> bool:
    with probe(host) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_ports(count: int, host: str = "0.0.0.0") -> int:
    """The first of `count` consecutive ports all free on `host` now, below the ephemeral range.

    Where no block below it is free (a machine tuned to leave no room there), the kernel picks the
    first port; the caller's bind then names any port of the block that clashed."""
    room = _ephemeral_start() - count - LOW + 1  # where a block can start and end below the range
    for base in random.sample(range(LOW, LOW + max(room, 0)), min(_TRIES, max(room, 0))):
        if all(_bindable(host, port) for port in range(base, base + count)):
            return base
    with probe(host) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now, outside the range the kernel hands out on its own."""
    return free_ports(1, host)
