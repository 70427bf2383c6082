"""A host has its pod's name as host name, resolving to its own IP (what the kubelet gives a pod), so
a Gloo group, which binds to the address of its host name, forms across two hosts: vLLM's
data-parallel and expert-parallel groups on CPU are Gloo groups. Two hosts joined by a veth pair
of their own (not the cluster's bridge, which the package's cluster may hold meanwhile)."""

from __future__ import annotations

import ipaddress
import os
import shlex
from pathlib import Path

import pytest

from glmserve.cluster import hosts, netns
from glmserve.cluster.hosts import Host
from glmserve.cluster.pods import Pod, suffix
from glmserve.cluster.runtime import hosts_file

pytestmark = pytest.mark.slow

RANK = """
import datetime, socket, torch, torch.distributed as dist
print("hostname", socket.gethostname(), flush=True)
dist.init_process_group("gloo", init_method="tcp://{master}:29517", rank={rank}, world_size=2,
                        timeout=datetime.timedelta(seconds=30))
t = torch.tensor([{rank} + 1.0])
dist.all_reduce(t)
print("sum", t.item(), flush=True)
"""


def test_a_gloo_group_forms_across_two_hosts(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root; CI runs as root")
    subnet = netns.pick_subnet(netns.used_networks())
    names = [f"gloo-{suffix()}-{rank}" for rank in range(2)]
    addresses = [ipaddress.IPv4Interface(f"{subnet[2 + rank]}/{subnet.prefixlen}") for rank in range(2)]
    group = []
    for rank, (name, address) in enumerate(zip(names, addresses, strict=True)):
        script = RANK.format(master=addresses[0].ip, rank=rank)
        pod = Pod(prefix="gloo", role="worker", group="gloo", command=f"python -c {shlex.quote(script)}")
        group.append(Host(name=name, pod=pod, netns=f"test-{name}", veth="", address=address, dir=tmp_path / name))
    try:
        for host in group:
            netns.ip("netns", "add", host.netns)
        a, b = group
        netns.ip("link", "add", "gl0", "netns", a.netns, "type", "veth", "peer", "name", "gl0", "netns", b.netns)
        for host in group:
            netns.ip("-n", host.netns, "addr", "add", str(host.address), "dev", "gl0")
            netns.ip("-n", host.netns, "link", "set", "gl0", "up")
            netns.ip("-n", host.netns, "link", "set", "lo", "up")
            (netns.NETNS_ETC / host.netns).mkdir(parents=True, exist_ok=True)
            (netns.NETNS_ETC / host.netns / "hosts").write_text(hosts_file(group))
            host.dir.mkdir()
        processes = [hosts.start(host) for host in group]
        for process in processes:
            process.wait(timeout=90)
        logs = [host.log.read_text(errors="replace") for host in group]
        for host, log in zip(group, logs, strict=True):
            assert f"hostname {host.name}\n" in log, log
            assert "sum 3.0\n" in log, log
    finally:
        for host in group:
            hosts.kill_namespace(host.netns, None)
