"""`glmserve cluster up|status|logs|down`."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from glmserve.cluster import netns, runtime
from glmserve.cluster.hosts import ENV_FILE
from glmserve.cluster.pods import LIMITS_REDIS, Topology, topology
from glmserve.cluster.render import load, render
from glmserve.cluster.runtime import Cluster, Progress
from glmserve.cluster.serve import Dashboard, progress_line
from glmserve.cluster.state import STATE, HostRecord, State, lock_held, take_lock
from glmserve.common.errors import ConfigError
from glmserve.common.signals import until_signal
from glmserve.operator.settings import OperatorSettings

START_TIMEOUT_S = 1200
SUPERVISE_EVERY_S = 0.5


def machine_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise ConfigError("cannot read MemTotal from /proc/meminfo")


def check_memory(topo: Topology, available: int) -> None:
    """The pods' memory requests must fit this machine, as the scheduler would insist."""
    parts = [(pod, n) for pod, n in topo.pods if pod.memory_bytes]
    total = sum(pod.memory_bytes * n for pod, n in parts)
    if total > available:
        detail = ", ".join(f"{n} x {pod.group} {pod.memory_bytes / 2**30:.1f} GiB" for pod, n in parts)
        raise ConfigError(
            f"the pods request {total / 2**30:.1f} GiB of memory ({detail}) but this machine has "
            f"{available / 2**30:.1f} GiB: lower the NodeGroups' or ModelDeployment's resources/replicas"
        )


def parse_volumes(specs: list[str]) -> dict[str, Path]:
    volumes = {}
    for spec in specs:
        claim, sep, directory = spec.partition("=")
        if not sep or not claim or not directory:
            raise ConfigError(f"--volume {spec}: expected CLAIM=DIR")
        volumes[claim] = Path(directory).expanduser().resolve()
    return volumes


def plan(files: list[Path], volumes: dict[str, Path]) -> Topology:
    """Everything `up` will start, validated before anything starts."""
    objects = load(files)
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] == "ModelDeployment"}
    namespace = next(iter(namespaces), None) or "default"
    settings = OperatorSettings(redis_url=f"redis://{LIMITS_REDIS}.{namespace}.svc:6379/0")
    topo = topology(render(objects, settings), limits_redis=True, volumes=volumes)
    check_memory(topo, machine_memory())
    return topo


def wait_running(cluster: Cluster, started: float) -> None:
    dashboard = cluster.dashboard
    dashboard.submit(cluster.topology.serve_config)
    deadline = time.monotonic() + START_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        cluster.supervise_once()
        try:
            ready, line = progress_line(dashboard.applications())
        except OSError as exc:
            ready, line = False, f"dashboard: {exc}"
        if ready and cluster.serving():
            return
        if ready:
            line = "RUNNING; waiting for a Serve proxy on an ingress pod (the ingress Service's endpoints)"
        if line != last:
            cluster.progress(f"[{time.monotonic() - started:5.0f} s] {line}")
            last = line
        time.sleep(2)  # KubeRay's reconcile period
    raise ConfigError(f"the Serve applications were not RUNNING within {START_TIMEOUT_S} s")


def run_up(files: list[Path], volumes: dict[str, Path], progress: Progress) -> None:
    if os.geteuid() != 0:
        print("glmserve: cluster up needs root (network namespaces, veths, a bridge, mounts)", file=sys.stderr)
        raise SystemExit(2)
    topo = plan(files, volumes)
    lock = take_lock()
    for what in runtime.sweep():
        progress(f"removed a previous run's {what}")
    started = time.monotonic()
    cluster = Cluster(topo, progress)
    try:
        with until_signal() as stop:
            cluster.up()
            wait_running(cluster, started)
            cluster.write_state("running")
            progress(f"RUNNING after {time.monotonic() - started:.0f} s; OpenAI base URL:")
            print(cluster.base_url, flush=True)
            while not stop.wait(SUPERVISE_EVERY_S):
                cluster.supervise_once()
    finally:
        progress("removing every host")
        cluster.down()
        STATE.unlink(missing_ok=True)
        lock.close()
        progress("down")


def run_down(progress: Progress) -> None:
    state = State.read()
    if state is not None and lock_held():
        progress(f"stopping cluster up (pid {state.up_pid})")
        os.kill(state.up_pid, signal.SIGTERM)
        deadline = time.monotonic() + 120
        while lock_held() and time.monotonic() < deadline:
            time.sleep(0.2)
    for what in runtime.sweep():
        progress(f"removed {what}")
    STATE.unlink(missing_ok=True)
    left = netns.leftover_namespaces() + netns.leftover_links()
    if left:
        raise ConfigError(f"could not remove: {', '.join(left)}")
    progress("nothing of the cluster is left")


def status(as_json: bool) -> None:
    state = State.read()
    if state is None or not lock_held():
        raise ConfigError("no cluster is up (glmserve cluster up -f ...)")
    nodes: dict[str, str] = {}
    apps: dict[str, object] = {}
    head = next((h for h in state.hosts if h.role == "head"), None)
    if head is not None:
        dashboard = Dashboard(head.ip, state.auth_token)
        try:
            nodes = {n["node_ip"]: n["node_id"] for n in dashboard.nodes() if n.get("state") == "ALIVE"}
            apps = {name: app.get("status") for name, app in dashboard.applications().items()}
        except OSError as exc:
            apps = {"error": str(exc)}
    hosts: list[dict[str, Any]] = [
        {
            "name": h.name,
            "namespace": h.namespace,
            "ip": h.ip,
            "role": h.role,
            "pool": h.pool,
            "ray_node_id": nodes.get(h.ip),
            "pids": netns.pids(h.netns),
            "netns": h.netns,
            "veth": h.veth,
        }
        for h in state.hosts
    ]
    report = {"phase": state.phase, "base_url": state.base_url, "dashboard": state.dashboard, "applications": apps,
              "hosts": hosts}  # fmt: skip
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(f"{state.phase}  {state.base_url or ''}  applications: {apps}")
    for h in hosts:
        node = (h["ray_node_id"] or "-")[:12]
        print(f"{h['name']:<50} {h['role']:<7} {h['pool']:<16} {h['ip']:<15} node {node:<12} pids {len(h['pids'])}")


def _host(name: str) -> HostRecord:
    state = State.read()
    records = {h.name: h for h in state.hosts} if state else {}
    if name not in records:
        raise ConfigError(f"no host {name}; hosts: {', '.join(sorted(records)) or 'none (no cluster is up)'}")
    return records[name]


def exec_in(name: str, command: list[str]) -> None:
    """Like `kubectl exec`: the command runs in the host's network, mount and UTS namespaces, with the pod's env."""
    host = _host(name)
    if not command:
        raise ConfigError("name a command to run: glmserve cluster exec HOST -- COMMAND ...")
    env = json.loads((Path(host.dir) / ENV_FILE).read_text())
    os.execvpe("nsenter", ["nsenter", "-t", str(host.pid), "-n", "-m", "-u", "--", *command], env)


def logs(name: str) -> None:
    host_dir = Path(_host(name).dir)
    sys.stdout.write((host_dir / "pod.log").read_text(errors="replace"))
    print(f"\n(Ray's logs of this host: {host_dir / 'ray' / 'session_latest' / 'logs'})")
