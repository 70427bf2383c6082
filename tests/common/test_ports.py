import socket
from pathlib import Path

import pytest

from glmserve.common import ports


def _ephemeral_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, low: int, high: int) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text(f"{low}\t{high}\n")
    monkeypatch.setattr(ports, "_EPHEMERAL", path)


def test_a_picked_port_is_free_and_not_one_the_kernel_hands_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ephemeral_range(tmp_path, monkeypatch, 30000, 60999)
    picked = {ports.free_port() for _ in range(20)}
    assert all(ports.LOW <= p < 30000 for p in picked)
    for port in picked:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_picked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _ephemeral_range(tmp_path, monkeypatch, ports.LOW + 2, 60999)
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports.LOW))
        assert {ports.free_port() for _ in range(10)} == {ports.LOW + 1}


@pytest.mark.parametrize("count", [1, 3])
def test_with_no_room_below_the_ephemeral_range_the_kernel_picks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    _ephemeral_range(tmp_path, monkeypatch, 1024, 65535)
    port = ports.free_ports(count, "127.0.0.1")
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_ipv6_hosts_get_ipv6_ports() -> None:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    port = ports.free_port("::1")
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", port))


def test_free_ports_gives_a_block_nobody_holds_below_the_ephemeral_range() -> None:
    base = ports.free_ports(6)
    assert base >= ports.LOW
    held = []
    try:
        for port in range(base, base + 6):
            sock = socket.socket()
            sock.bind(("0.0.0.0", port))
            held.append(sock)
        assert ports.free_ports(6) not in range(base - 5, base + 6)  # a block overlapping a held port is skipped
    finally:
        for sock in held:
            sock.close()
