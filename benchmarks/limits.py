"""Admission decisions per second and their latency of the admission library (glmserve/admission,
which the router runs): one process, one local redis-server. Goal: >= 20,000/s at p99 <= 2 ms.

    python -m benchmarks.limits [--seconds 1.5] [--repeats 3]

Compares, in one run, the shipped RedisBackend (concurrent admissions share a Lua call) with
the same script called once per admission over a connection pool, and with the in-memory store
(no network: the ceiling of the Python path). Every admission is a full `Limiter.admit` (plan
checks, store decision, metrics) for one of 1000 tenants with room left, so each one writes.
Every case runs `--repeats` times, the cases interleaved, and reports its median run (by
throughput): on a shared machine whose speed changes from minute to minute, a slow spell then
spoils one repeat of several cases instead of every repeat of one. Writes limits.json,
limits.md and limits.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import redis

from benchmarks import results_io
from glmserve.admission.backend import LimitsBackend
from glmserve.admission.limiter import Limiter, LimiterConfig
from glmserve.admission.memory import MemoryBackend
from glmserve.admission.model import Limits, Rates
from glmserve.admission.redis_backend import RedisBackend
from glmserve.admission.tenants import ResolvedTenant
from glmserve.common.errors import OverloadedError
from tests.admission.redis_server import RedisServer

TENANTS = [
    ResolvedTenant(f"t{i}", "bench", "standard", Limits(Rates(10**7, 10**9, 10**9, 10**6)), frozenset(), None)
    for i in range(1000)
]
GOAL_PER_S, GOAL_P99_MS = 20_000, 2.0
SHIPPED = "redis: batched (shipped)"
LEVELS = (1, 16, 24, 32, 128)  # admissions in flight in the process


@dataclass(frozen=True, slots=True)
class Run:
    store: str
    mode: str  # admit: admissions only; cycle: each admission then settled
    concurrency: int
    loop: str
    admissions: int
    store_errors: int  # admissions refused because the store timed out (fail-closed)
    seconds: float
    per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    client_cpu_us: float  # this process's CPU per admission
    redis_cpu_us: float  # redis-server's script time per admission (0 for memory)
    per_s_repeats: tuple[float, ...] = ()  # every repeat's throughput; this run is their median


def stores(url: str) -> dict[str, Callable[[], LimitsBackend]]:
    return {
        "memory (no network)": MemoryBackend,
        SHIPPED: lambda: RedisBackend.from_url(url),
        # the same script, one EVALSHA per admission, on up to 64 connections (redis-py pools 100)
        "redis: one call per admission": lambda: RedisBackend.from_url(url, max_batch=1, max_in_flight=64),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def script_usec(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return sum(int(s["usec"]) for name, s in stats.items() if name in ("cmdstat_evalsha", "cmdstat_eval"))


async def measure(
    make_store: Callable[[], LimitsBackend],
    mode: str,
    concurrency: int,
    seconds: float,
    progress: Callable[[int], None],
) -> tuple[list[float], int, float, float]:
    limiter = Limiter(make_store(), LimiterConfig(lease_ttl_s=2.0))
    latencies: list[float] = []  # of the admissions that started inside the measured window
    errors: list[float] = []
    warm = time.perf_counter() + 0.5  # warm-up first: script load, connections
    stop = warm + seconds
    cpu: dict[str, float] = {}  # process CPU time when the window opened and closed

    async def client(k: int) -> None:
        i = k * 37
        while True:
            now = time.perf_counter()
            if now >= warm and "start" not in cpu:
                cpu["start"] = time.process_time()
            if now >= stop:
                if "stop" not in cpu:
                    cpu["stop"] = time.process_time()
                return
            try:
                admission = await limiter.admit(TENANTS[i % len(TENANTS)], model="m", prompt_tokens=100, max_tokens=100)
            except OverloadedError:  # the store timed out (a starved machine): count it, go on
                errors.append(now)
                await asyncio.sleep(0.01)
                continue
            if now >= warm:
                latencies.append(time.perf_counter() - now)
            if mode == "cycle":
                limiter.settle(admission, output_tokens=50)
            i += 1
            if i % 100 == 0:  # the memory store never suspends: let progress and settlements run
                await asyncio.sleep(0)

    async def report() -> None:
        while time.perf_counter() < stop:
            await asyncio.sleep(min(1.0, max(0.0, stop - time.perf_counter())))
            progress(len(latencies))

    await asyncio.gather(report(), *(client(k) for k in range(concurrency)))
    await limiter.aclose()
    return latencies, len(errors), seconds, cpu["stop"] - cpu["start"]


@dataclass(frozen=True, slots=True)
class Case:
    store: str
    mode: str
    concurrency: int
    loop: str


def run_one(url: str, case: Case, seconds: float, label: str) -> Run:
    name, mode, concurrency, loop = case.store, case.mode, case.concurrency, case.loop

    def progress(n: int) -> None:
        print(f"\r{label} {n:>9,} admissions so far", end="", file=sys.stderr, flush=True)

    before = script_usec(url)
    coroutine: Coroutine[Any, Any, tuple[list[float], int, float, float]] = measure(
        stores(url)[name], mode, concurrency, seconds, progress
    )
    if loop == "uvloop":
        import uvloop

        latencies, errors, elapsed, cpu = uvloop.run(coroutine)
    else:
        latencies, errors, elapsed, cpu = asyncio.run(coroutine)
    redis_us = script_usec(url) - before
    latencies.sort()
    n = len(latencies)
    run = Run(
        name,
        mode,
        concurrency,
        loop,
        n,
        errors,
        round(elapsed, 3),
        round(n / elapsed),
        round(percentile(latencies, 0.5) * 1e3, 3),
        round(percentile(latencies, 0.99) * 1e3, 3),
        round(percentile(latencies, 0.999) * 1e3, 3),
        round(cpu / n * 1e6, 1),
        # the warm-up's script time is included: an upper bound
        round(redis_us / n, 1) if name.startswith("redis") else 0.0,
    )
    print(
        f"\r{label} {run.per_s:>9,.0f}/s  p50 {run.p50_ms:.3f} ms  p99 {run.p99_ms:.3f} ms"
        f"  (client CPU {run.client_cpu_us} us, redis {run.redis_cpu_us} us per admission"
        f"{f', {errors} store timeouts' if errors else ''})",
        file=sys.stderr,
        flush=True,
    )
    return run


def plan() -> list[Case]:
    names = ["memory (no network)", SHIPPED, "redis: one call per admission"]
    runs = [Case(n, "admit", c, "asyncio") for c in LEVELS for n in names]
    runs += [Case(n, "cycle", 32, "asyncio") for n in names]
    runs.append(Case(SHIPPED, "admit", 32, "uvloop"))  # uvicorn's loop, when installed
    return runs


def median_run(repeats: list[Run]) -> Run:
    ordered = sorted(repeats, key=lambda r: r.per_s)
    return replace(ordered[len(ordered) // 2], per_s_repeats=tuple(r.per_s for r in repeats))


def pick_headline(runs: list[Run]) -> Run:
    """Throughput under the latency goal, the usual way to state both: the shipped store's best
    admit-only run (default event loop) whose p99 meets the goal, else its run at 32 in flight."""
    shipped = [r for r in runs if r.store == SHIPPED and r.mode == "admit" and r.loop == "asyncio"]
    within = [r for r in shipped if r.p99_ms <= GOAL_P99_MS]
    return max(within, key=lambda r: r.per_s) if within else next(r for r in shipped if r.concurrency == 32)


def ratios(runs: list[Run]) -> dict[str, float]:
    def find(store: str, mode: str, concurrency: int) -> Run:
        return next(
            r for r in runs if (r.store, r.mode, r.concurrency, r.loop) == (store, mode, concurrency, "asyncio")
        )

    out = {}
    for mode, c in [("admit", c) for c in LEVELS] + [("cycle", 32)]:
        shipped = find(SHIPPED, mode, c)
        out[f"{mode} c={c}: batched / one call per admission"] = round(
            shipped.per_s / find("redis: one call per admission", mode, c).per_s, 2
        )
        out[f"{mode} c={c}: batched / memory"] = round(shipped.per_s / find("memory (no network)", mode, c).per_s, 2)
    return out


def python_speed() -> float:
    """CPU seconds for 10 million additions in a Python loop: this machine's speed right now, to
    compare runs across machines (about 0.4 s on an idle 2.3 GHz core with CPython 3.11)."""
    started, total = time.process_time(), 0
    for i in range(10_000_000):
        total += i
    return round(time.process_time() - started, 3)


def fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def markdown(result: dict[str, Any]) -> str:
    env, cond, head = results_io.environment(), result["conditions"], result["headline"]
    rate_met = "met" if head["per_s"] >= GOAL_PER_S else "NOT met"
    p99_met = "met" if head["p99_ms"] <= GOAL_P99_MS else "NOT met"
    lines = [
        "# Admission benchmark (`python -m benchmarks.limits`)",
        "",
        f"{env['cpus']} CPUs ({env['machine']}), {cond['redis']}, Python {env['python']}, commit {env['commit']};"
        f" median of {result['repeats']} interleaved runs of {result['seconds']} s per case, 1000 tenants, every"
        " admission allowed and written. Client and redis-server share the machine; its load average (1, 5, 15"
        f" min) was {fmt_load(cond['load_average_at_start'])} at the start and"
        f" {fmt_load(cond['load_average_at_end'])} at the end; 10M additions in a Python loop took"
        f" {cond['python_10M_additions_s']} CPU s (start, end; ~0.4 on an idle core).",
        "",
        "**Headline**: the shipped store's best admit-only run whose p99 meets the goal (else its run at 32"
        f" in flight): {head['concurrency']} in flight, "
        f"{head['per_s']:,.0f} decisions/s (goal >= {GOAL_PER_S:,}: {rate_met}),"
        f" p99 {head['p99_ms']} ms (goal <= {GOAL_P99_MS} ms: {p99_met}).",
        "",
        "| store | mode | in flight | loop | decisions/s | (all repeats) | p50 ms | p99 ms | p99.9 ms"
        " | client CPU us | redis us | store timeouts |",
        "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['store']} | {r['mode']} | {r['concurrency']} | {r['loop']} | {r['per_s']:,.0f}"
            f" | {', '.join(f'{x:,.0f}' for x in r['per_s_repeats'])} | {r['p50_ms']}"
            f" | {r['p99_ms']} | {r['p999_ms']} | {r['client_cpu_us']} | {r['redis_cpu_us']} | {r['store_errors']} |"
        )
    lines += ["", "| ratio (throughput) | value |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in result["ratios"].items()]
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], path: Path, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in runs if r.mode == "admit" and r.loop == "asyncio"]
    names = list(dict.fromkeys(r.store for r in shown))
    levels = sorted({r.concurrency for r in shown})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [i + k * width for i in range(len(levels))]
        mine = [next(r for r in shown if r.store == name and r.concurrency == c) for c in levels]
        left.bar(xs, [r.per_s for r in mine], width, label=name)
        right.bar(xs, [r.p99_ms for r in mine], width, label=name)
    for ax, title in ((left, "admission decisions / s"), (right, "p99 latency (ms, log)")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(levels))], [f"{c} in flight" for c in levels])
        ax.set_title(title)
    left.axhline(GOAL_PER_S, color="k", ls="--", lw=1, label=f"goal {GOAL_PER_S:,}/s")
    right.axhline(GOAL_P99_MS, color="k", ls="--", lw=1, label=f"goal {GOAL_P99_MS} ms")
    right.set_yscale("log")
    left.legend(fontsize=8)
    fig.suptitle(f"glmserve admission: one process, one local redis-server ({machine})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.5, help="measured seconds per run (after 0.5 s warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case, interleaved; the median is reported")
    args = parser.parse_args()
    runs: list[Run] = []
    load_at_start = os.getloadavg()  # other work on the machine competes with client and server
    speed_at_start = python_speed()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            with redis.Redis.from_url(server.url) as client:
                redis_version = f"redis-server {client.info('server')['redis_version']}"
            todo = plan()
            measured: dict[Case, list[Run]] = {case: [] for case in todo}
            for repeat in range(1, args.repeats + 1):
                for k, case in enumerate(todo, 1):
                    label = f"[{repeat}/{args.repeats} {k:>2}/{len(todo)}] {case.store:<30} {case.mode:<5}"
                    label += f" {case.concurrency:>3} in flight {case.loop:<7}"
                    measured[case].append(run_one(server.url, case, args.seconds, label))
            runs = [median_run(measured[case]) for case in todo]
        finally:
            server.stop()
    headline = pick_headline(runs)
    result = {
        "benchmark": "admission decisions per process against one local redis-server",
        "command": "python -m benchmarks.limits",
        "seconds": args.seconds,
        "repeats": args.repeats,
        "goals": {"decisions_per_s": GOAL_PER_S, "p99_ms": GOAL_P99_MS},
        "conditions": {
            "redis": redis_version,
            "python_10M_additions_s": [speed_at_start, python_speed()],  # at the start and at the end
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
        },
        "headline": asdict(headline),
        "ratios": ratios(runs),
        "runs": [asdict(r) for r in runs],
    }
    text = markdown(result)
    title = f"{os.cpu_count()} CPUs, load {fmt_load(load_at_start)}"
    paths = results_io.write("limits", result, text, lambda path: plot(runs, path, title))
    print(f"\nwrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
