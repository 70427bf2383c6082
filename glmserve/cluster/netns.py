"""Hosts as network namespaces: one bridge, one veth pair and one namespace per host (iproute2).

Every name starts with a prefix of its own, so that `down` (and a later `up`) can find and remove
whatever a killed `up` left behind.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

from glmserve.common.errors import ConfigError

BRIDGE = "glms0"
NS_PREFIX = "glms-"
VETH_PREFIX = "glmsv"
NETNS_ETC = Path("/etc/netns")
# Private ranges tried in turn; the first that overlaps no address or route of this machine wins.
CANDIDATE_SUBNETS = tuple(ipaddress.IPv4Network(f"10.213.{i}.0/24") for i in range(0, 256, 16))


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise ConfigError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    for link in json.loads(ip("-j", "-4", "addr").stdout or "[]"):
        for addr in link.get("addr_info", []):
            nets.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    for route in json.loads(ip("-j", "-4", "route").stdout or "[]"):
        if route.get("dst") not in (None, "default"):
            nets.append(ipaddress.IPv4Network(route["dst"], strict=False))
    return nets


def pick_subnet(used: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    for net in CANDIDATE_SUBNETS:
        if not any(net.overlaps(u) for u in used):
            return net
    raise ConfigError(f"every candidate subnet (10.213.0.0/16 in /24s) is in use on this machine: {used}")


def create_bridge(gateway: ipaddress.IPv4Interface) -> None:
    """The machine's own namespace gets `gateway` on the bridge, so it reaches every host."""
    ip("link", "add", BRIDGE, "type", "bridge")
    ip("addr", "add", str(gateway), "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")


def create_host(netns: str, veth: str, address: ipaddress.IPv4Interface, gateway: ipaddress.IPv4Address) -> None:
    ip("netns", "add", netns)
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    ip("link", "set", veth, "master", BRIDGE, "up")
    ip("-n", netns, "addr", "add", str(address), "dev", "eth0")
    ip("-n", netns, "link", "set", "lo", "up")
    ip("-n", netns, "link", "set", "eth0", "up")
    ip("-n", netns, "route", "add", "default", "via", str(gateway))


def pids(netns: str) -> list[int]:
    """Every process in the namespace, whoever started it (a host's processes, all of them)."""
    done = ip("netns", "pids", netns, check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def delete_host(netns: str, veth: str | None) -> None:
    """Deleting the namespace deletes its end of the veth pair, and with it ours."""
    ip("netns", "del", netns, check=False)
    if veth:
        ip("link", "del", veth, check=False)
    hosts_dir = NETNS_ETC / netns
    for f in hosts_dir.glob("*"):
        f.unlink()
    if hosts_dir.exists():
        hosts_dir.rmdir()


def leftover_namespaces() -> list[str]:
    done = ip("netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.startswith(NS_PREFIX)]


def leftover_links() -> list[str]:
    links = json.loads(ip("-j", "link", "show", check=False).stdout or "[]")
    return [link["ifname"] for link in links if link["ifname"] == BRIDGE or link["ifname"].startswith(VETH_PREFIX)]


def link_bytes(veth: str) -> tuple[int, int]:
    """(rx, tx) bytes the machine's end of a host's veth counted (`ip -s link`)."""
    link = json.loads(ip("-j", "-s", "link", "show", veth).stdout)[0]
    stats = link["stats64"]
    return stats["rx"]["bytes"], stats["tx"]["bytes"]


def set_link(veth: str, up: bool) -> None:
    """The machine's end of a host's veth, down or up: a cut cable (no reset reaches anyone)."""
    ip("link", "set", veth, "up" if up else "down")
