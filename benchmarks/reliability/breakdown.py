"""Where an overload's time goes: each stack process's CPU (and the load generator's: it shares
the cores) and the time its threads were runnable but waited for a core (the kernel's
schedstat), the machine's busy cores and CPU pressure (PSI), the router's flow-control wait of
the requests it let through and its refusals, and how long the ingress replica itself held each
request (Serve's access log), read before and after one load; the load generator's own event-loop
lag (loop_lag); optionally a py-spy profile of the ingress and router."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

from benchmarks.cpu_by_process import cpu_seconds
from benchmarks.reliability.stack import Stack
from benchmarks.servers import metric_sum
from glmserve.common.metrics import ROUTER_FLOW_DISPATCHED, ROUTER_FLOW_SHED, ROUTER_FLOW_TENANT_WAIT
from tests.helpers.stack_processes import stack_processes

LOAD_GENERATOR = "load generator"
PRESSURE = Path("/proc/pressure/cpu")
# Serve's access log line of a request the ingress replica answered: method, route, status, the
# time from its ASGI call to the response's end (direct ingress: uvicorn in the replica itself).
_ACCESS = re.compile(r" (GET|POST) (\S+) (\d{3}) ([\d.]+)ms")
REFUSAL = "POST 503"
TRIVIAL = "GET /v1/models 200"  # no glmserve work behind it: the ingress's HTTP path and loop alone
LAG_TICK_S = 0.05
TRIVIAL_EVERY_S = 0.2
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    cpu_s: dict[str, float]  # role -> user + system CPU seconds of its processes
    runqueue_s: dict[str, float]  # role -> seconds its threads were runnable but waited for a core
    machine_busy_s: float  # CPU seconds the whole machine spent busy (every process, all cores)
    pressure_s: float | None  # PSI "some": seconds during which a runnable task waited for a core
    access_logs: dict[Path, int]  # the ingress replicas' Serve logs -> their size (read on from there)
    every_process: dict[int, tuple[str, float]]  # pid -> (command line, CPU seconds): the machine's others too
    role_pids: tuple[int, ...]  # the stack's processes counted by role
    waited_s: float  # requests' summed wait in the router's flow control
    dispatched: int  # requests the router's flow control let through
    shed: int  # requests it refused


def _router_metrics(stack: Stack) -> str:
    return re.findall(r"metrics (http://\S+/metrics)\)", stack.log.read_text())[0]


def _runqueue_s(pid: int) -> float:
    """Seconds all of `pid`'s live threads spent runnable on a run queue, not on a core."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(task.read_text().split()[1])
        except (OSError, IndexError, ValueError):  # the thread ended meanwhile
            continue
    return total / 1e9


def _pressure_s() -> float | None:
    """PSI's cumulative CPU "some" stall (None where the kernel has no PSI)."""
    try:
        some = PRESSURE.read_text().splitlines()[0]
    except OSError:
        return None
    return int(some.rpartition("total=")[2]) / 1e6


def _busy_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)


def _access_logs(pids: list[int]) -> dict[Path, int]:
    """The ingress replicas' Serve logs (the files they hold open) and their sizes now."""
    logs = {}
    for pid in pids:
        try:
            files = psutil.Process(pid).open_files()
        except psutil.Error:
            continue
        for f in files:
            path = Path(f.path)
            if path.parent.name == "serve" and path.name.startswith("replica_") and path.suffix == ".log":
                logs[path] = path.stat().st_size
    return logs


def snapshot(stack: Stack) -> Snapshot:
    """Router counters over all tenants: each load runs alone."""
    cpu: dict[str, float] = {}
    runqueue: dict[str, float] = {}
    ingress = []
    pids = []
    for p in stack_processes(stack.proc.pid):
        pids.append(p.pid)
        try:
            times = psutil.Process(p.pid).cpu_times()
        except psutil.Error:
            continue
        cpu[p.role] = cpu.get(p.role, 0.0) + times.user + times.system
        runqueue[p.role] = runqueue.get(p.role, 0.0) + _runqueue_s(p.pid)
        if p.role == "ingress":
            ingress.append(p.pid)
    own = psutil.Process(os.getpid()).cpu_times()
    cpu[LOAD_GENERATOR] = own.user + own.system
    runqueue[LOAD_GENERATOR] = _runqueue_s(os.getpid())
    url = _router_metrics(stack)
    return Snapshot(
        time.monotonic(),
        cpu,
        runqueue,
        _busy_s(),
        _pressure_s(),
        _access_logs(ingress),
        cpu_seconds(),
        tuple(pids),
        metric_sum(url, ROUTER_FLOW_TENANT_WAIT.name),
        int(metric_sum(url, ROUTER_FLOW_DISPATCHED.name)),
        int(metric_sum(url, ROUTER_FLOW_SHED.name)),
    )


def _held_ms(before: Snapshot) -> dict[str, list[float]]:
    """REFUSAL and TRIVIAL -> the ingress replica's own time (ms) for each such request it logged
    since `before`."""
    held: dict[str, list[float]] = {}
    for path, offset in before.access_logs.items():
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        for method, route, status, ms in _ACCESS.findall(text):
            key = f"{method} {status}" if method == "POST" else f"{method} {route} {status}"
            held.setdefault(key, []).append(float(ms))
    return held


def spent(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """Between two snapshots: cores each role used and the cores' worth of time its threads waited
    for one, the machine's busy cores and CPU pressure (the share of the time some runnable task
    waited), the router's mean wait and its refusals a second, and the ingress replica's own mean
    time for the requests it refused (503)."""
    wall = after.at - before.at
    dispatched = after.dispatched - before.dispatched
    held = _held_ms(before)
    refused, trivial = held.get(REFUSAL, []), held.get(TRIVIAL, [])
    pressure = None
    if before.pressure_s is not None and after.pressure_s is not None:
        pressure = round((after.pressure_s - before.pressure_s) / wall, 2)
    return {
        "cores": {role: round((after.cpu_s.get(role, 0.0) - s) / wall, 2) for role, s in before.cpu_s.items()},
        "runqueue_cores": {
            role: round((after.runqueue_s.get(role, 0.0) - s) / wall, 2) for role, s in before.runqueue_s.items()
        },
        "machine_busy_cores": round((after.machine_busy_s - before.machine_busy_s) / wall, 2),
        "cpu_pressure_some": pressure,
        "router_mean_wait_ms": round(1000 * (after.waited_s - before.waited_s) / dispatched, 1) if dispatched else 0.0,
        "router_refusals_per_s": round((after.shed - before.shed) / wall, 1),
        "ingress_refusals_logged": len(refused),
        "ingress_refusal_ms": round(sum(refused) / len(refused), 1) if refused else None,
        "ingress_trivial_ms": round(sum(trivial) / len(trivial), 1) if trivial else None,
        "other_cores": _others(before, after, wall),
    }


# What else takes the cores besides the stack's roles, by command line (the first that matches).
_OTHERS = {
    "Ray GCS": "gcs_server",
    "raylet": "/raylet",
    "Ray metrics/dashboard agent": "dashboard/agent.py",
    "Serve controller": "ServeController",
    "Serve proxy": "ProxyActor",
    "redis-server": "redis-server",
    "other Ray workers": "ray::",
}
OTHER = "anything else on the machine"


def _others(before: Snapshot, after: Snapshot, wall: float) -> dict[str, float]:
    """Cores used between the snapshots by the processes outside the stack's roles and the load
    generator, grouped (_OTHERS): what else on the 2-core machine took its share."""
    counted = set(after.role_pids) | {os.getpid()}
    used: dict[str, float] = {}
    for pid, (line, cpu) in after.every_process.items():
        if pid in counted:
            continue
        group = next((name for name, mark in _OTHERS.items() if mark in line), OTHER)
        used[group] = used.get(group, 0.0) + cpu - before.every_process.get(pid, ("", 0.0))[1]
    return {group: round(cpu / wall, 2) for group, cpu in sorted(used.items(), key=lambda kv: -kv[1])}


def _mean_p99_ms(values: list[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    ordered = sorted(values)
    return round(1000 * sum(ordered) / len(ordered), 1), round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 1)


async def watched(work: Awaitable[T], base: str) -> tuple[T, dict[str, float]]:
    """`work`'s result, and meanwhile: how late this (the load generator's) event loop woke a task
    that slept LAG_TICK_S (a late loop delays every client's timestamps: that part of a
    client-measured time is the load generator's own), and a trivial request (`GET /models`)
    every TRIVIAL_EVERY_S, timed at the client (the ingress times it too: TRIVIAL)."""
    lags: list[float] = []
    trivial: list[float] = []
    task = asyncio.ensure_future(work)

    async def ask() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            while not task.done():
                sent = time.perf_counter()
                try:
                    await http.get("/models")
                except httpx.HTTPError:  # the ingress is answering the load; this probe is only a gauge
                    pass
                else:
                    trivial.append(time.perf_counter() - sent)
                await asyncio.wait({task}, timeout=TRIVIAL_EVERY_S)

    asker = asyncio.ensure_future(ask())
    while not task.done():
        slept = time.monotonic()
        await asyncio.wait({task}, timeout=LAG_TICK_S)
        if not task.done():
            lags.append(max(0.0, time.monotonic() - slept - LAG_TICK_S))
    await asker
    lag_mean, lag_p99 = _mean_p99_ms(lags)
    trivial_mean, _ = _mean_p99_ms(trivial)
    return task.result(), {"lag_mean_ms": lag_mean, "lag_p99_ms": lag_p99, "trivial_client_ms": trivial_mean}


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
