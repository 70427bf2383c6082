"""A running cluster: the bridge, one host per pod, name resolution, and the kubelet's part of
bringing a dead pod back (as a new host with a new name and IP, after RESTART_DELAY_S)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from glmserve.cluster import hosts, netns
from glmserve.cluster.hosts import Host
from glmserve.cluster.pods import REDIS_PORT, Pod, Topology, suffix
from glmserve.cluster.serve import Dashboard
from glmserve.cluster.state import ROOT, HostRecord, State
from glmserve.common.errors import ConfigError

Progress = Callable[[str], None]
# KubeRay recreates a deleted worker pod on its next reconcile, and the scheduler and kubelet
# start it; measured, that is seconds. One second here keeps "a new pod, not a restarted process".
RESTART_DELAY_S = 1.0
READY_TIMEOUT_S = 120.0
ROUTER_PORT = 50051
# Cluster DNS is each host's /etc/hosts. Any other query must fail at once: this machine's resolver
# is out of the hosts' reach, and gRPC's c-ares resolver waits for the AAAA answer that /etc/hosts
# lacks before it uses the A record (Ray's workers then cannot reach the GCS "within 5 seconds").
RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"


@dataclass
class Running:
    host: Host
    process: subprocess.Popen[bytes]


@dataclass
class Cluster:
    topology: Topology
    progress: Progress
    subnet: ipaddress.IPv4Network = field(init=False)
    running: list[Running] = field(default_factory=list)
    restarts: list[tuple[str, str, float]] = field(default_factory=list)  # (old, new, seconds dead->started)
    base_url: str | None = None
    _next: int = 2
    _veths: int = 0

    def __post_init__(self) -> None:
        self.subnet = netns.pick_subnet(netns.used_networks())

    @property
    def gateway(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.subnet[1]}/{self.subnet.prefixlen}")

    @property
    def dashboard(self) -> Dashboard:
        head = next(r.host for r in self.running if r.host.pod.role == "head")
        return Dashboard(head.ip, self.topology.auth_token)

    # --- hosts

    def _new_host(self, pod: Pod) -> Host:
        name = f"{pod.prefix}-{suffix()}"
        address = ipaddress.IPv4Interface(f"{self.subnet[self._next]}/{self.subnet.prefixlen}")
        self._next += 1
        self._veths += 1
        host = Host(
            name=name, pod=pod, netns=f"{netns.NS_PREFIX}{name}"[:60], veth=f"{netns.VETH_PREFIX}{self._veths}",
            address=address, dir=ROOT / "hosts" / name,
        )  # fmt: skip
        netns.create_host(host.netns, host.veth, address, self.gateway.ip)
        host.dir.mkdir(parents=True, exist_ok=True)
        return host

    def _write_hosts_files(self, new: Host) -> None:
        # Rewritten in place: running processes see /etc/hosts through a bind mount of this inode.
        content = hosts_file([*(r.host for r in self.running), new])
        for host in [*(r.host for r in self.running), new]:
            path = netns.NETNS_ETC / host.netns / "hosts"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w") as f:
                f.write(content)

    def _launch(self, pod: Pod) -> Running:
        host = self._new_host(pod)
        self._write_hosts_files(host)
        (netns.NETNS_ETC / host.netns / "resolv.conf").write_text(RESOLV_CONF)
        run = Running(host, hosts.start(host))
        self.running.append(run)
        return run

    # --- bring-up

    def up(self) -> str:
        t0 = time.monotonic()
        netns.create_bridge(self.gateway)
        self.progress(f"bridge {netns.BRIDGE} {self.gateway} (this machine), hosts on {self.subnet}")
        for pod, replicas in self.topology.pods:
            if pod.role in ("redis", "head"):
                self._start_and_wait(pod, replicas)
        self._start_and_wait_workers()
        for pod, replicas in self.topology.replicas("router"):
            self._start_and_wait(pod, replicas)
        self.write_state("starting")
        self.progress(f"all {len(self.running)} hosts up ({time.monotonic() - t0:.0f} s); submitting serveConfigV2")
        return self.base()

    def base(self) -> str:
        ingress = next(r.host for r in self.running if self.topology.ingress_service in r.host.pod.services)
        self.base_url = f"http://{ingress.ip}:8000{self.topology.base_path}"
        return self.base_url

    def serving(self) -> bool:
        """KubeRay's readiness of the serve Service: an ingress pod whose Serve proxy answers
        `/-/healthz`. The base URL then names that pod."""
        for run in self.running:
            if self.topology.ingress_service not in run.host.pod.services:
                continue
            try:
                with urllib.request.urlopen(f"http://{run.host.ip}:8000/-/healthz", timeout=2) as reply:
                    if reply.status == 200:
                        self.base_url = f"http://{run.host.ip}:8000{self.topology.base_path}"
                        return True
            except OSError:
                continue
        return False

    def _start_and_wait(self, pod: Pod, replicas: int) -> None:
        started = [self._launch(pod) for _ in range(replicas)]
        for run in started:
            self._wait_ready(run)
            self.progress(f"host {run.host.name} ({pod.role} {pod.group}) at {run.host.ip} is ready")

    def _start_and_wait_workers(self) -> None:
        started = [self._launch(pod) for pod, n in self.topology.replicas("worker") for _ in range(n)]
        want = 1 + len(started)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive(started)
            try:
                alive = [n for n in self.dashboard.nodes() if n.get("state") == "ALIVE"]
            except OSError:  # the dashboard is busy starting: ask again
                alive = []
            if len(alive) >= want:
                self.progress(f"{len(alive)} Ray nodes alive: " + ", ".join(sorted(n["node_ip"] for n in alive)))
                return
            time.sleep(1)
        raise ConfigError(f"only some Ray workers joined within {READY_TIMEOUT_S:.0f} s; see `glmserve cluster logs`")

    def _check_alive(self, runs: list[Running]) -> None:
        for run in runs:
            if run.process.poll() is not None:
                tail = run.host.log.read_text(errors="replace")[-3000:]
                raise ConfigError(f"host {run.host.name} ({run.host.pod.group}) exited:\n{tail}")

    def _wait_ready(self, run: Running) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive([run])
            if self._ready(run.host):
                return
            time.sleep(0.5)
        raise ConfigError(f"host {run.host.name} was not ready within {READY_TIMEOUT_S:.0f} s")

    def _ready(self, host: Host) -> bool:
        role = host.pod.role
        if role == "head":
            return Dashboard(host.ip, self.topology.auth_token).healthy()
        port = REDIS_PORT if role == "redis" else ROUTER_PORT
        try:
            socket.create_connection((host.ip, port), timeout=1).close()
        except OSError:
            return False
        return True

    # --- supervision

    def supervise_once(self) -> None:
        """Each dead host is removed and its pod comes back as a new host in the same role."""
        for run in list(self.running):
            if run.process.poll() is None:
                continue
            died = time.monotonic()
            old = run.host
            self.progress(f"host {old.name} ({old.pod.group}) died (exit {run.process.returncode}); replacing it")
            hosts.kill_namespace(old.netns, old.veth)
            self.running.remove(run)
            time.sleep(RESTART_DELAY_S)
            new = self._launch(old.pod)
            self.restarts.append((old.name, new.host.name, time.monotonic() - died))
            self.progress(f"host {new.host.name} ({old.pod.group}) started at {new.host.ip}")
            if old.pod.role == "head":
                self._resubmit(new)
            if self.base_url and old.ip in self.base_url:
                self.base()
            self.write_state("running")

    def _resubmit(self, head: Running) -> None:
        """KubeRay submits serveConfigV2 again when the head's GET shows no application (a new head
        without GCS fault tolerance has lost them). With fault tolerance the GET waits for the
        restarted Serve controller and may time out or answer 503 meanwhile: ask again, as
        KubeRay's next reconcile would."""
        self._wait_ready(head)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                apps = self.dashboard.applications()
                break
            except OSError as exc:  # URLError, HTTPError and timeouts
                if time.monotonic() > deadline:
                    self.progress(f"the new head's Serve applications are unknown ({exc}); not submitting")
                    return
                time.sleep(2)
        if not apps:
            self.progress("the new head has no Serve application: submitting serveConfigV2 again")
            self.dashboard.submit(self.topology.serve_config)
        else:
            self.progress("the new head kept the Serve applications (GCS fault tolerance)")

    # --- teardown

    def down(self) -> None:
        for run in reversed(self.running):
            hosts.kill_namespace(run.host.netns, run.host.veth)
            if run.process.poll() is None:
                run.process.wait(timeout=10)
        self.running.clear()
        sweep()

    def write_state(self, phase: str) -> None:
        head = next((r.host for r in self.running if r.host.pod.role == "head"), None)
        State(
            up_pid=os.getpid(),
            subnet=str(self.subnet),
            gateway=str(self.gateway),
            phase=phase,
            base_url=self.base_url,
            dashboard=f"http://{head.ip}:8265" if head else None,
            auth_token=self.topology.auth_token,
            hosts=tuple(
                HostRecord(
                    name=r.host.name,
                    namespace=self.topology.namespace,
                    role=r.host.pod.role,
                    pool=r.host.pod.group,
                    ip=r.host.ip,
                    netns=r.host.netns,
                    veth=r.host.veth,
                    dir=str(r.host.dir),
                    pid=r.process.pid,
                )
                for r in self.running
            ),
        ).write()


def hosts_file(all_hosts: list[Host]) -> str:
    """Cluster DNS as /etc/hosts: each pod's name, and every Service's name at each pod it selects."""
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    lines += [f"{h.ip} {h.name} {' '.join(h.pod.services)}".rstrip() for h in all_hosts]
    return "\n".join(lines) + "\n"


def sweep() -> list[str]:
    """Removes every namespace, veth and bridge of ours, with every process in those namespaces
    (also what a killed `up` left behind). Returns what it removed."""
    removed = []
    for ns in netns.leftover_namespaces():
        hosts.kill_namespace(ns, None)
        removed.append(f"namespace {ns}")
    for link in netns.leftover_links():
        netns.ip("link", "del", link, check=False)
        removed.append(f"link {link}")
    for path in netns.NETNS_ETC.glob(f"{netns.NS_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
    return removed
