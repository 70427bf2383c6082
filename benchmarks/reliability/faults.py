"""The fault cases: each sends greedy streams under its own tenant, injects its fault once every
stream is under way, probes the API meanwhile, and fills one row of the report."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.reliability.clients import Probes, Streamed, client, probe, stream_ids, with_probes
from benchmarks.reliability.report import Row
from benchmarks.reliability.stack import Stack, restart_command
from benchmarks.servers import metric_sum
from glmserve.common.metrics import INGRESS_ROUTER_FALLBACKS
from tests.helpers.stack_processes import engine_cores, router_pid

PROMPTS = [f"Story {i}: the {word} went" for i, word in enumerate(["fox", "river", "lamp", "city"])]
MAX_TOKENS = 96
UNDER_WAY = 8  # tokens every stream holds before the fault


async def reference(stack: Stack) -> list[list[int]]:
    """The uninterrupted greedy runs of PROMPTS, streamed at once as in the faulted runs."""
    async with client(stack.base, stack.keys["reference"]) as http:
        runs = await asyncio.gather(*(stream_ids(http, p, MAX_TOKENS) for p in PROMPTS))
    assert all(run.status == 200 for run in runs), [run.status for run in runs]
    return [run.ids for run in runs]


@dataclass(frozen=True, slots=True)
class Faulted:
    tenant: str
    runs: list[Streamed]
    probes: Probes
    at: float  # when the fault happened (monotonic)
    moves_before: int


async def _faulted(stack: Stack, tenant: str, fault: Callable[[], None]) -> Faulted:
    """PROMPTS streamed at once under `tenant`, probes running; `fault()` once each stream holds
    UNDER_WAY tokens."""
    under_way = [asyncio.Event() for _ in PROMPTS]
    at: list[float] = []
    moves_before = stack.moves()

    def mark(i: int) -> Callable[[int], None]:
        return lambda n: under_way[i].set() if n >= UNDER_WAY else None

    async def one(http: httpx.AsyncClient, i: int) -> Streamed:
        try:
            return await stream_ids(http, PROMPTS[i], MAX_TOKENS, on_token=mark(i))
        finally:
            under_way[i].set()  # a stream that ended early does not hold the fault back

    async def streams_with_fault() -> list[Streamed]:
        async with client(stack.base, stack.keys[tenant]) as http:
            runs = [asyncio.create_task(one(http, i)) for i in range(len(PROMPTS))]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in under_way)), timeout=120)
            at.append(time.monotonic())
            await asyncio.to_thread(fault)
            return list(await asyncio.gather(*runs))

    async with client(stack.base, stack.keys[tenant]) as probe_http:
        runs, probes = await with_probes(probe_http, streams_with_fault())
    return Faulted(tenant, runs, probes, at[0], moves_before)


def _row(stack: Stack, case: str, faulted: Faulted, expected: list[list[int]], *, note: str = "") -> Row:
    row = Row(case, note=note)
    runs, probes = faulted.runs, faulted.probes
    row.sent = len(runs) + len(probes.answers)
    for run, ids in zip(runs, expected, strict=True):
        if run.status == 200:
            row.completed += 1
        else:
            row.failed[str(run.status)] += 1
        row.lost += run.ids != ids
    for _, status, _ in probes.answers:
        if status == 200:
            row.completed += 1
        else:
            row.failed[str(status or "no answer")] += 1
    row.migrated = stack.moves() - faulted.moves_before
    row.recovery_s = max([probes.outage_after(faulted.at), *(run.stall_after(faulted.at) for run in runs)])
    row.delivered = sum(len(run.ids) for run in runs) + sum(n for _, _, n in probes.answers)
    time.sleep(1)  # the last settlements leave the ingress after its answers
    row.billed = stack.billed(faulted.tenant)
    row.billed_wrongly = row.billed != row.delivered
    return row


def engine_killed(stack: Stack, expected: list[list[int]]) -> Row:
    victim = engine_cores(stack.proc.pid)[0]
    faulted = asyncio.run(_faulted(stack, "sigkill", lambda: os.kill(victim, signal.SIGKILL)))
    back = stack.wait_for_engines() + (time.monotonic() - faulted.at)
    return _row(
        stack, "engine SIGKILL mid-stream", faulted, expected, note=f"replica replaced {back:.0f} s after the kill"
    )


def engine_frozen(stack: Stack, expected: list[list[int]], frozen_s: float = 20.0) -> Row:
    """An engine process frozen (SIGSTOP) for `frozen_s`, longer than the stall limit."""
    victim = engine_cores(stack.proc.pid)[0]

    def fault() -> None:
        os.kill(victim, signal.SIGSTOP)
        try:
            time.sleep(frozen_s)
        finally:
            os.kill(victim, signal.SIGCONT)

    faulted = asyncio.run(_faulted(stack, "sigstop", fault))
    stack.wait_for_engines()
    return _row(stack, f"engine SIGSTOP for {frozen_s:g} s mid-stream", faulted, expected)


def router_restarted(
    stack: Stack, expected: list[list[int]], workdir: Path, down_s: float = 3.0
) -> tuple[Row, subprocess.Popen[bytes]]:
    """The router SIGKILLed mid-stream and started again `down_s` later with its own command (as its
    Deployment would); the new router is the caller's to stop."""
    pid = router_pid(stack.proc.pid)
    assert pid is not None, "glmserve up runs no router"
    cmd, env, cwd = restart_command(pid)
    restarted: list[subprocess.Popen[bytes]] = []

    def fault() -> None:
        os.kill(pid, signal.SIGKILL)
        time.sleep(down_s)
        with (workdir / "router-restarted.log").open("wb") as log:
            restarted.append(subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT))

    faulted = asyncio.run(_faulted(stack, "router", fault))
    routed_again = _until_routed(stack) + (time.monotonic() - faulted.at)
    note = f"the new router routes again {routed_again:.0f} s after the kill"
    return _row(stack, f"router SIGKILL, restarted {down_s:g} s later", faulted, expected, note=note), restarted[0]


def _until_routed(stack: Stack, timeout: float = 120) -> float:
    """Seconds until a request is routed by the router again (the ingress stops falling back)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = metric_sum(stack.metrics, INGRESS_ROUTER_FALLBACKS.name)
        status, _ = asyncio.run(_probe_once(stack))
        if status == 200 and metric_sum(stack.metrics, INGRESS_ROUTER_FALLBACKS.name) == before:
            return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError("the restarted router routed nothing")


async def _probe_once(stack: Stack) -> tuple[int, int]:
    async with client(stack.base, stack.keys["reference"]) as http:
        return await probe(http)


def redis_restarted(stack: Stack, expected: list[list[int]], down_s: float = 3.0) -> Row:
    def fault() -> None:
        stack.redis.stop()
        time.sleep(down_s)
        stack.redis.start()

    faulted = asyncio.run(_faulted(stack, "redis", fault))
    note = "limits outage policy fail-open (glmserve up's default)"
    return _row(stack, f"Redis stopped, restarted {down_s:g} s later", faulted, expected, note=note)


def client_disconnects(stack: Stack, hang_up_after: int = 16, max_tokens: int = 256) -> Row:
    """Every stream's client leaves after `hang_up_after` tokens: the engines stop, and the tenant
    is billed what the engines generated for it."""
    before = _settled(stack.generated)

    async def streams() -> list[Streamed]:
        async with client(stack.base, stack.keys["disconnect"]) as http:
            return list(await asyncio.gather(
                *(stream_ids(http, p, max_tokens, hang_up_after=hang_up_after) for p in PROMPTS)
            ))  # fmt: skip

    runs = asyncio.run(streams())
    after = _settled(stack.generated)
    # per engine replica: a replica Serve replaced meanwhile takes its series with it
    generated = int(sum(value - before.get(replica, 0) for replica, value in after.items()))
    row = Row("client disconnect after 16 tokens", sent=len(runs))
    row.failed.update(str(run.status) for run in runs)
    row.delivered = sum(len(run.ids) for run in runs)
    row.billed = stack.billed("disconnect")
    row.billed_wrongly = row.billed != generated
    row.note = f"engines generated {generated} tokens of {len(runs)} x {max_tokens} asked"
    return row


def _settled(read: Callable[[], dict[str, float]], quiet_s: float = 12.0) -> dict[str, float]:
    """A counter Ray exports periodically (every ~10 s), once it stopped moving for `quiet_s`."""
    value = read()
    while True:
        time.sleep(quiet_s)
        again = read()
        if again == value:
            return value
        value = again
