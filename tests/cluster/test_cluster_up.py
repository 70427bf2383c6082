"""`glmserve cluster up` end to end: the operator's rendered deployment as separate hosts, served."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time

import openai
import pytest
from openai import OpenAI

from glmserve.cluster import netns
from tests.cluster.conftest import EXAMPLE, GLMSERVE, MODELS, MODELS_CLAIM, Clusters, RunningCluster, glmserve, shm

pytestmark = pytest.mark.slow


def test_ctrl_c_while_starting_leaves_nothing(clusters: Clusters) -> None:
    """First in the package, before the shared cluster starts: `up` interrupted once its head host
    runs (its processes started, the rest not yet) removes every host it made."""
    if os.geteuid() != 0:
        pytest.skip("glmserve cluster needs root (network namespaces); CI runs as root")
    clusters.down()
    shm_before = shm()
    up = subprocess.Popen(
        [*GLMSERVE, "cluster", "up", "-f", str(EXAMPLE), "--volume", f"{MODELS_CLAIM}={MODELS}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert up.stderr is not None
    progress = []
    try:
        for line in up.stderr:
            progress.append(line)
            if " (head " in line and line.rstrip().endswith("is ready"):
                break
        else:
            pytest.fail(f"cluster up ended before its head was ready:\n{''.join(progress)[-3000:]}")
        namespaces = netns.leftover_namespaces()
        started = [pid for ns in namespaces for pid in netns.pids(ns)]
        assert started, f"no process runs in the hosts made so far ({namespaces})"
        up.send_signal(signal.SIGINT)
        _, rest = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
    print(f"\ninterrupted with {len(namespaces)} hosts made, {len(started)} processes in them")
    assert rest.rstrip().endswith("down"), rest[-3000:]  # its teardown's last word
    assert not netns.leftover_namespaces()
    assert not netns.leftover_links()
    deadline = time.monotonic() + 10  # SIGKILLed: gone once the kernel has torn them down
    while (alive := [pid for pid in started if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"processes of the removed hosts still run: {alive}"
    assert not (shm() - shm_before)
    status = glmserve("cluster", "status", check=False)
    assert status.returncode != 0 and "no cluster is up" in status.stderr


def _running(pid: int) -> bool:
    """Not exited: a zombie (exited, not yet reaped by init) holds no resources but its pid."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_status_lists_every_host_with_its_own_ip_and_ray_node(tiny_cluster: RunningCluster) -> None:
    hosts = tiny_cluster.hosts()
    assert {h["role"] for h in hosts} == {"redis", "head", "worker", "router"}
    ips = [ipaddress.ip_address(h["ip"]) for h in hosts]
    assert len(set(ips)) == len(ips)
    for h in hosts:
        assert h["pids"], f"{h['name']} has no process"
        assert h["namespace"] and h["name"]
        if h["role"] in ("head", "worker"):
            assert h["ray_node_id"], f"{h['name']} is not a Ray node"
    pools = {h["pool"] for h in hosts if h["role"] == "worker"}
    assert {"ingress", "prefill", "decode"} <= pools
    assert len(tiny_cluster.hosts(role="router")) == 2


def test_the_router_service_name_resolves_to_every_router_pod(tiny_cluster: RunningCluster) -> None:
    routers = sorted(h["ip"] for h in tiny_cluster.hosts(role="router"))
    ingress = tiny_cluster.hosts(pool="ingress")[0]["name"]
    name = next(
        line.split("=", 1)[1].rsplit(":", 1)[0]
        for line in tiny_cluster.exec(ingress, "env").stdout.splitlines()
        if line.startswith("GLMSERVE_ROUTER_ADDRESS=")
    )
    resolved = tiny_cluster.exec(ingress, "getent", "ahostsv4", name).stdout
    assert sorted({line.split()[0] for line in resolved.splitlines()}) == routers


def test_tenants_are_served_through_an_ingress_host(tiny_cluster: RunningCluster) -> None:
    for tenant, key in tiny_cluster.api_keys.items():
        client = OpenAI(base_url=tiny_cluster.base_url, api_key=key, timeout=120)
        reply = client.chat.completions.create(
            model=tiny_cluster.model,
            messages=[{"role": "user", "content": f"hello from {tenant}"}],
            max_tokens=8,
            temperature=0,
        )
        assert reply.usage is not None
        assert reply.usage.completion_tokens > 0


def test_an_unknown_key_is_refused(tiny_cluster: RunningCluster) -> None:
    bad = OpenAI(base_url=tiny_cluster.base_url, api_key="not-a-key", timeout=60)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=tiny_cluster.model, messages=[{"role": "user", "content": "x"}])


def test_a_stream_through_the_cluster(tiny_cluster: RunningCluster) -> None:
    client = OpenAI(base_url=tiny_cluster.base_url, api_key=tiny_cluster.pro_key, timeout=120)
    sent = time.monotonic()
    first = None
    text = ""
    stream = client.chat.completions.create(
        model=tiny_cluster.model, messages=[{"role": "user", "content": "stream"}], max_tokens=16, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.monotonic()
            text += chunk.choices[0].delta.content
    assert first is not None and text
    print(f"\nfirst token {first - sent:.2f} s after the request; cluster up took {tiny_cluster.started_s:.0f} s")


def test_a_second_up_fails_clearly(tiny_cluster: RunningCluster) -> None:
    volume = f"{MODELS_CLAIM}={MODELS}"
    second = glmserve("cluster", "up", "-f", str(EXAMPLE), "--volume", volume, check=False, timeout=120)
    assert second.returncode != 0
    assert "already up" in second.stderr
