"""Flow control's priority and fairness, simulated in process through the real Router + FlowController.

    python -m benchmarks.flow_control [--duration 10] [--slots 16] [--service 0.4]

Engines are simulated: two static decode workers of `--slots`/2 slots each; a routed request holds
its slot for `--service` seconds on average (its first token after a quarter of that, the rest
drawn uniformly between half and one and a half times its mean) and then completes on the router
replica that routed it. Arrivals are Poisson and spread round-robin over 1 or 2 router
replicas (flow.replicas = 1 or 2: each hands out its share of the slots). Each scenario runs with
flow control as configured (bands by plan, fairness between tenants) and with today-like FIFO: the
same controller with every request in one band and one flow, so only the order differs.

- priority: premium sends 20% of capacity; standard and batch flood to 3x capacity in all.
  Goal: premium P90 TTFT within 1.5x of premium alone.
- fairness: two tenants of one plan; `a` sends 10x its fair share (5x capacity), `b` half its
  share. Goal: b's P90 TTFT within 1.5x of b alone.

Only requests arriving after the queues filled (the second half of `--duration`) are measured.
Writes benchmarks/results/flow_control.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import percentile
from benchmarks.results_io import markdown_table, write
from glmserve.common.errors import OverloadedError
from glmserve.common.tenancy import PRIORITY_RANK, PriorityClass
from glmserve.router.config import RouterConfig
from glmserve.router.flow import Ticket
from glmserve.router.router import Router
from glmserve.router.types import RouteQuery, Usage

MODEL = "m"
PROMPT = np.arange(256, dtype=np.uint32)
COST = 1000.0  # prompt + max_tokens: the same for every request, so fairness counts requests
MAX_QUEUED = 256  # across the replicas


@dataclass(frozen=True, slots=True)
class Stream:
    tenant: str
    priority: PriorityClass
    share: float  # arrival rate as a fraction of the engines' capacity


SCENARIOS: dict[str, tuple[str, list[Stream]]] = {
    # subject tenant, streams under load; the unloaded baseline is the subject's stream alone
    "priority": (
        "premium",
        [Stream("premium", "premium", 0.2), Stream("standard", "standard", 1.4), Stream("batch", "batch", 1.4)],
    ),
    "fairness": ("b", [Stream("b", "standard", 0.25), Stream("a", "standard", 5.0)]),
}


@dataclass(frozen=True, slots=True)
class Times:
    prefill_s: float  # until the first token
    decode_s: float  # then until the end


@dataclass
class Run:
    ttft: dict[str, list[float]] = field(default_factory=dict)
    shed: dict[str, int] = field(default_factory=dict)
    finished_at: list[float] = field(default_factory=list)  # loop time of each completion
    throughput: float = 0.0  # completions per second in the measured half
    running: int = 0
    max_running: int = 0


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def replicas(n: int, slots: int) -> list[Router]:
    workers = [{"worker_id": f"e{i}", "model": MODEL, "max_running_requests": slots // 2} for i in range(2)]
    config = RouterConfig.model_validate(
        {
            "policy": "least-load",
            "workers": {"static": workers},
            "flow": {"replicas": n, "max_queued": MAX_QUEUED // n, "queue_ttl_s": 60},
        }
    )
    return [Router(config) for _ in range(n)]


async def request(router: Router, ticket: Ticket, run: Run, *, label: str, measured: bool, times: Times) -> None:
    """One request as the router's Route and Complete calls see it; `label`: its stream's tenant."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        await router.flow.acquire(ticket)
    except OverloadedError:
        run.shed[label] = run.shed.get(label, 0) + 1
        return
    try:
        router.route(RouteQuery(ticket.request_id, ticket.tenant, MODEL, PROMPT))
        run.running += 1
        run.max_running = max(run.max_running, run.running)
        await asyncio.sleep(times.prefill_s)
        if measured:
            run.ttft.setdefault(label, []).append(loop.time() - start)
        await asyncio.sleep(times.decode_s)
        run.running -= 1
        run.finished_at.append(loop.time())
        router.complete(ticket.request_id, "finished", Usage())
    finally:
        router.flow.release(ticket.request_id)


async def simulate(streams: list[Stream], n: int, fifo: bool, args: argparse.Namespace) -> Run:
    routers = replicas(n, args.slots)
    capacity = args.slots / args.service  # requests per second the engines finish
    run = Run()
    tasks: set[asyncio.Task[None]] = set()
    turn, ids = itertools.count(), itertools.count()
    loop = asyncio.get_running_loop()
    begin = loop.time()

    async def arrivals(stream: Stream, seed: int) -> None:
        rng = random.Random(seed)
        # FIFO: one band, one flow for everyone; only the order of service differs.
        band, tenant = (0, "") if fifo else (PRIORITY_RANK[stream.priority], stream.tenant)
        while (now := loop.time() - begin) < args.duration:
            await asyncio.sleep(rng.expovariate(stream.share * capacity))
            ticket = Ticket(f"r{next(ids)}", MODEL, tenant, band, 1.0, COST)
            router = routers[next(turn) % n]  # the ingress spreads Route calls round-robin
            measured = now >= args.duration / 2
            times = Times(args.service / 4, rng.uniform(0.5, 1.5) * args.service * 3 / 4)
            task = asyncio.create_task(
                request(router, ticket, run, label=stream.tenant, measured=measured, times=times)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    await asyncio.gather(*(arrivals(s, i) for i, s in enumerate(streams)))
    while tasks:
        await asyncio.gather(*tasks)
    half = args.duration / 2
    run.throughput = sum(begin + half <= t < begin + args.duration for t in run.finished_at) / half
    return run


def summary(run: Run, tenant: str) -> dict[str, Any]:
    ttft = sorted(run.ttft.get(tenant, []))
    return {
        "served": len(ttft),
        "shed": run.shed.get(tenant, 0),
        "ttft_p50_ms": percentile(ttft, 50) * 1000,
        "ttft_p90_ms": percentile(ttft, 90) * 1000,
    }


async def overhead(workers: int = 64, n: int = 20000) -> float:
    """Microseconds one acquire + release costs the router when a slot is free (the common case)."""
    static = [{"worker_id": f"e{i}", "model": MODEL, "max_running_requests": 8} for i in range(workers)]
    router = Router(RouterConfig.model_validate({"workers": {"static": static}}))
    tickets = [Ticket(f"r{i}", MODEL, "t", 2, 1.0, COST) for i in range(n)]
    started = time.perf_counter()
    for ticket in tickets:
        await router.flow.acquire(ticket)
        router.flow.release(ticket.request_id)
    return (time.perf_counter() - started) / n * 1e6


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"overhead_us": await overhead()}
    log(f"acquire + release with a free slot, 64 workers: {results['overhead_us']:.1f} us")
    for scenario, (subject, streams) in SCENARIOS.items():
        alone = [s for s in streams if s.tenant == subject]
        for n in (1, 2):
            for mode, load, fifo in (("unloaded", alone, False), ("fifo", streams, True), ("flow", streams, False)):
                log(f"{scenario}: {mode}, {n} router replica(s)")
                run = await simulate(load, n, fifo, args)
                results[f"{scenario}/{n}/{mode}"] = {
                    "scenario": scenario,
                    "replicas": n,
                    "mode": mode,
                    "subject": subject,
                    "tenants": {s.tenant: summary(run, s.tenant) for s in load},
                    "completed_per_s": run.throughput,
                    "max_running": run.max_running,
                }
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    headers = ["scenario", "router replicas", "mode", "subject", "subject TTFT p50 ms", "subject TTFT p90 ms",
               "p90 / unloaded", "others' TTFT p90 ms", "shed (by tenant)", "done/s", "max running"]  # fmt: skip
    rows = []
    for key, r in results.items():
        if key == "overhead_us":
            continue
        subject = r["tenants"][r["subject"]]
        unloaded = results[f"{r['scenario']}/{r['replicas']}/unloaded"]["tenants"][r["subject"]]["ttft_p90_ms"]
        others = ", ".join(f"{t}: {v['ttft_p90_ms']:.0f}" if v["served"] else f"{t}: none served"
                           for t, v in r["tenants"].items() if t != r["subject"])  # fmt: skip
        shed = ", ".join(f"{t}: {v['shed']}" for t, v in r["tenants"].items() if v["shed"]) or "none"
        rows.append([r["scenario"], r["replicas"], r["mode"], r["subject"], subject["ttft_p50_ms"],
                     subject["ttft_p90_ms"], f"{subject['ttft_p90_ms'] / unloaded:.2f}x", others or "-", shed,
                     r["completed_per_s"], r["max_running"]])  # fmt: skip
    capacity = args.slots / args.service
    return (
        f"# Flow control: priority and fairness (simulated engines, {args.slots} slots, "
        f"{args.service:g} s per request = {capacity:g} req/s)\n\n"
        + markdown_table(headers, rows)
        + "\nIn-process simulation through the real Router and FlowController (`python -m benchmarks.flow_control`): "
        "engines are sleeps holding a slot, TTFT is the wait for a slot plus a quarter of the service time. "
        "fifo: the same controller with every request in one band and one flow (today-like order); flow: bands "
        "by plan priority, VTC fairness between tenants (idle credit 3 requests), 1 slot per router replica "
        "reserved for light tenants, times the replicas (docs/flow-control.md). priority: premium sends 0.2x "
        "capacity, standard and batch bring the total to 3x. fairness: tenant a sends 10x its fair share (5x "
        "capacity), b half its share. done/s: completions per second in the measured half (the reserve's "
        "price: its slots idle while only floods wait). "
        f"Queues hold {MAX_QUEUED} requests across the replicas; with 2 replicas each hands out half the slots "
        "(max running never exceeds the engines' slots). Goal: subject P90 within 1.5x of unloaded.\n\n"
        f"Flow control's own cost, one acquire + release with a free slot (64 workers): "
        f"{results['overhead_us']:.1f} us.\n"
    )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SCENARIOS), figsize=(11, 4))
    for ax, scenario in zip(axes, SCENARIOS, strict=True):
        labels, values = [], []
        for n in (1, 2):
            for mode in ("unloaded", "fifo", "flow"):
                r = results[f"{scenario}/{n}/{mode}"]
                labels.append(f"{mode}\n{n} router{'s' if n > 1 else ''}")
                values.append(r["tenants"][r["subject"]]["ttft_p90_ms"])
        colors = ["tab:gray", "tab:red", "tab:green"] * 2
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), labels, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("P90 TTFT (ms, log)")
        ax.set_title(f"{scenario}: {SCENARIOS[scenario][0]}'s P90 TTFT")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of arrivals per run")
    parser.add_argument("--slots", type=int, default=16, help="engine slots in all (two workers)")
    parser.add_argument("--service", type=float, default=0.4, help="seconds a request holds its slot")
    args = parser.parse_args()
    results = asyncio.run(bench(args))
    config = {"duration_s": args.duration, "slots": args.slots, "service_s": args.service, "max_queued": MAX_QUEUED}
    for path in write("flow_control", {"config": config, "runs": results}, report(results, args),
                      lambda p: plot(results, p)):  # fmt: skip
        log(f"wrote {path}")


if __name__ == "__main__":
    main()
