"""The processes of a running `glmserve up`, by role, with their memory: what fault tests kill or
freeze and what overload tests watch. Shared by tests/ and benchmarks/ (a stack started by either)."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

# What each role's command line holds (the first that matches): Ray names a Serve replica's
# worker after its deployment (`ray::ServeReplica:<app>:<deployment>`; the engines' deployments
# hold vLLM's front end) and vLLM its engine process `VLLM::EngineCore`.
ROLES = {
    "ingress": "ServeReplica:glmserve:Ingress",
    "engine replica": "ServeReplica:glmserve:",
    "engine core": "VLLM::EngineCore",
    "router": "router serve",
}


@dataclass(frozen=True, slots=True)
class StackProcess:
    pid: int
    role: str
    rss_bytes: int


def stack_processes(root_pid: int) -> list[StackProcess]:
    """The ingress replicas, engine cores and router that `glmserve up` (`root_pid`) started and
    that run now, sorted by role then pid."""
    found = []
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            line = " ".join(proc.cmdline())
            role = next((name for name, mark in ROLES.items() if mark in line), None)
            if role is not None:
                found.append(StackProcess(proc.pid, role, proc.memory_info().rss))
        except psutil.Error:  # it ended while we looked
            continue
    return sorted(found, key=lambda p: (p.role, p.pid))


def engine_cores(root_pid: int) -> list[int]:
    """The stack's `VLLM::EngineCore` pids, one per engine replica."""
    return [p.pid for p in stack_processes(root_pid) if p.role == "engine core"]


def router_pid(root_pid: int) -> int | None:
    return next((p.pid for p in stack_processes(root_pid) if p.role == "router"), None)
