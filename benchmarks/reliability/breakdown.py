"""Where an overload's time goes: each stack process's CPU (and the load generator's: it shares
the cores), the router's flow-control wait of the requests it let through, and its refusals,
read before and after one load; optionally a py-spy profile of the ingress and router."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.reliability.stack import Stack
from benchmarks.servers import metric_sum
from glmserve.common.metrics import ROUTER_FLOW_DISPATCHED, ROUTER_FLOW_SHED, ROUTER_FLOW_TENANT_WAIT
from tests.helpers.stack_processes import stack_processes

LOAD_GENERATOR = "load generator"


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    cpu_s: dict[str, float]  # role -> user + system CPU seconds of its processes
    waited_s: float  # requests' summed wait in the router's flow control
    dispatched: int  # requests the router's flow control let through
    shed: int  # requests it refused


def _router_metrics(stack: Stack) -> str:
    return re.findall(r"metrics (http://\S+/metrics)\)", stack.log.read_text())[0]


def snapshot(stack: Stack) -> Snapshot:
    """Router counters over all tenants: each load runs alone."""
    cpu: dict[str, float] = {}
    for p in stack_processes(stack.proc.pid):
        try:
            times = psutil.Process(p.pid).cpu_times()
        except psutil.Error:
            continue
        cpu[p.role] = cpu.get(p.role, 0.0) + times.user + times.system
    own = psutil.Process(os.getpid()).cpu_times()
    cpu[LOAD_GENERATOR] = own.user + own.system
    url = _router_metrics(stack)
    return Snapshot(
        time.monotonic(),
        cpu,
        metric_sum(url, ROUTER_FLOW_TENANT_WAIT.name),
        int(metric_sum(url, ROUTER_FLOW_DISPATCHED.name)),
        int(metric_sum(url, ROUTER_FLOW_SHED.name)),
    )


def spent(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """Between two snapshots: cores each role used, the router's mean wait and its refusals a second."""
    wall = after.at - before.at
    dispatched = after.dispatched - before.dispatched
    return {
        "cores": {role: round((after.cpu_s.get(role, 0.0) - s) / wall, 2) for role, s in before.cpu_s.items()},
        "router_mean_wait_ms": round(1000 * (after.waited_s - before.waited_s) / dispatched, 1) if dispatched else 0.0,
        "router_refusals_per_s": round((after.shed - before.shed) / wall, 1),
    }


def profile(stack: Stack, seconds: float, out: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy records of the ingress and the router for `seconds` (collapsed stacks in `out`)."""
    out.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).parent / "py-spy")
    started = []
    for p in stack_processes(stack.proc.pid):
        if p.role in ("ingress", "router"):
            name = out / f"{p.role}-{p.pid}.txt"
            cmd = [spy, "record", "--pid", str(p.pid), "--duration", str(int(seconds)), "--rate", "50",
                   "--format", "raw", "--output", str(name), "--nonblocking"]  # fmt: skip
            started.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return started


def top_frames(collapsed: Path, n: int = 15) -> list[tuple[str, float]]:
    """Where in glmserve's code a py-spy raw record's samples are: each sample's innermost
    glmserve frame (callees in libraries included), as a share of the samples."""
    seen: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        ours = [frame for frame in stack.split(";") if "glmserve/" in frame]
        frame = ours[-1] if ours else "(no glmserve frame: Ray, gRPC, the event loop)"
        seen[frame] = seen.get(frame, 0) + int(count)
        total += int(count)
    ranked = sorted(seen.items(), key=lambda kv: -kv[1])[:n]
    return [(frame, round(count / total, 3)) for frame, count in ranked] if total else []
