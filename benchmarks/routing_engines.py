"""Routing quality on real vLLM-CPU engines: precise vs approximate vs round-robin vs an oracle.

    python -m benchmarks.routing_engines [--replicas 4] [--routers 2] [--tenants 32] [--sessions 64]
                                         [--kv-cache-gib 0.03]

For each policy, one `glmserve up --replicas N` whose ingress asks `--routers` replicas of
`glmserve router serve` running that policy (the operator's default is 2 router pods; the
ingress sends successive requests to each in turn, and the engines register with each), then
the same seeded multi-tenant agentic workload (benchmarks/workload.py: tenants with long shared
contexts, multi-turn sessions, token-id prompts on /v1/completions, 1 output token, so latency
is TTFT). Each engine's KV cache is kept small (`--kv-cache-gib`): by
default 0.03 GiB, about 15.7K tokens of glm-4.6-tiny, so one engine holds the contexts of about 5
of the 32 tenants (~72K tokens of contexts in all, before histories), as each of llm-d's pods held
a fraction of its benchmark's tenants. Where a request lands decides whether its prefix is cached,
and caches evict all the time. (With 8 tenants and 0.04 GiB every context fits everywhere, nothing
is evicted, and approximate routing finds exactly what precise routing finds.) The oracle's hit
rate is the bound no router can beat: each prompt's longest prefix shared with any earlier prompt
(whole blocks), as if one infinite cache served all.
Writes benchmarks/results/routing_engines.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from benchmarks.loadgen import percentile
from benchmarks.results_io import markdown_table, write
from benchmarks.servers import launch, stop, wait_ready
from benchmarks.workload import Session, WorkloadConfig, generate
from glmserve.common.config import ROUTER_HASHING
from glmserve.common.ports import free_port

MODEL = "glm-4.6-tiny"
POLICIES = ("precise", "approximate", "round-robin")
BLOCK = 128  # vLLM-CPU's default block size: prefix-cache hits come in whole blocks


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def workload(args: argparse.Namespace) -> list[Session]:
    return generate(
        WorkloadConfig(
            seed=args.seed,
            tenants=args.tenants,
            sessions=args.sessions,
            turns=args.turns,
            session_rate_per_s=args.session_rate,
            context_tokens=(1500, 3000),
            user_tokens=(50, 200),
            output_tokens=(16, 48),
            think_s=1.0,
            vocab=4096,  # glm-4.6-tiny's
        )
    )


def oracle_hit_rate(sessions: list[Session], block: int = BLOCK) -> float:
    """Cached share of prompt tokens if every prompt found its longest earlier prefix (arrival order)."""
    prompts = sorted(((s.start_s + k, s.prompt(k)) for s in sessions for k in range(len(s.turns))), key=lambda p: p[0])
    seen: set[int] = set()
    cached = total = 0
    for _, ids in prompts:
        chain, parent = [], 0
        for n in range((len(ids) - 1) // block):  # the last token is always computed, as in vLLM
            parent = hash((parent, ids[n * block : (n + 1) * block].tobytes()))
            chain.append(parent)
        hit = next((n for n in range(len(chain), 0, -1) if chain[n - 1] in seen), 0)
        cached, total = cached + hit * block, total + len(ids)
        seen.update(chain)
    return cached / total


async def drive(base: str, sessions: list[Session]) -> list[dict[str, Any]]:
    """Every session on its own schedule; the next turn follows the reply after the think time."""
    t0 = time.monotonic()
    results: list[dict[str, Any]] = []

    async def session(client: httpx.AsyncClient, s: Session) -> None:
        await asyncio.sleep(max(0.0, s.start_s - (time.monotonic() - t0)))
        for k, turn in enumerate(s.turns):
            body = {"model": MODEL, "prompt": s.prompt(k).tolist(), "max_tokens": 1, "temperature": 0}
            start = time.perf_counter()
            reply = await client.post(f"{base}/completions", json=body)
            latency = time.perf_counter() - start
            usage = (reply.json().get("usage") or {}) if reply.status_code == 200 else {}
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            results.append(
                {
                    "status": reply.status_code,
                    "ttft_s": latency,
                    "prompt": usage.get("prompt_tokens", 0),
                    "cached": cached,
                }
            )
            await asyncio.sleep(turn.think_s)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=512)) as client:
        await asyncio.gather(*(session(client, s) for s in sessions))
    return results


def run_policy(policy: str, sessions: list[Session], args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """`args.routers` router processes, as the operator runs router pods: every engine registers with
    each, and the ingress sends successive requests to each in turn."""
    router_ports, port = [free_port() for _ in range(args.routers)], free_port()
    bin_dir = Path(sys.executable).parent
    logs, routers = [], []
    for n, router_port in enumerate(router_ports):
        config = workdir / f"router-{policy}-{n}.yaml"
        config.write_text(yaml.safe_dump({"host": "127.0.0.1", "port": router_port, "metrics_port": None,
                                          "policy": policy, "hashing": ROUTER_HASHING}))  # fmt: skip
        logs.append((workdir / f"router-{policy}-{n}.log").open("wb"))
        routers.append(launch([str(bin_dir / "glmserve"), "router", "serve", "--config", str(config)], logs[-1]))
    address = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in router_ports)
    logs.append((workdir / f"up-{policy}.log").open("wb"))
    up = launch(
        [str(bin_dir / "glmserve"), "up", "--port", str(port), "--replicas", str(args.replicas),
         "--kv-cache-gib", str(args.kv_cache_gib), "--router-address", address],
        logs[-1],
    )  # fmt: skip
    try:
        started = time.monotonic()
        wait_ready(f"http://127.0.0.1:{port}/health", up)
        log(f"{policy}: {args.replicas} engines ready after {time.monotonic() - started:.0f} s; driving the workload")
        results = asyncio.run(drive(f"http://127.0.0.1:{port}/v1", sessions))
    finally:
        stop(up)
        for router in routers:
            stop(router)
        for f in logs:
            f.close()
    return results


def summary(results: list[dict[str, Any]]) -> dict[str, float]:
    ok = [r for r in results if r["status"] == 200]
    ttft = sorted(r["ttft_s"] * 1000 for r in ok)
    prompt = sum(r["prompt"] for r in ok)
    return {
        "ok": len(ok),
        "sent": len(results),
        "hit_rate": sum(r["cached"] for r in ok) / prompt if prompt else 0.0,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p90_ms": percentile(ttft, 90),
        "ttft_p99_ms": percentile(ttft, 99),
    }


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for policy, results in runs.items():
        ttft = sorted(r["ttft_s"] * 1000 for r in results if r["status"] == 200)
        ax.plot(ttft, np.arange(len(ttft)) / max(len(ttft), 1), label=policy)
    ax.set(xscale="log", xlabel="TTFT (ms)", ylabel="fraction of requests", title="TTFT by routing policy (vLLM-CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--routers", type=int, default=2, help="router replicas (the operator's default: 2)")
    parser.add_argument("--tenants", type=int, default=32)
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--session-rate", type=float, default=1.0, help="sessions started per second")
    parser.add_argument("--kv-cache-gib", type=float, default=0.03, help="per engine: small, so caches compete")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    args = parser.parse_args()

    sessions = workload(args)
    oracle = oracle_hit_rate(sessions)
    log(f"{len(sessions)} sessions x {args.turns} turns; oracle hit rate {oracle:.1%}")
    workdir = Path(tempfile.mkdtemp(prefix="glmserve-bench-routing-"))
    runs = {policy: run_policy(policy, sessions, args, workdir) for policy in args.policies}
    table = {policy: summary(results) for policy, results in runs.items()}
    rows = [[p, f"{s['ok']}/{s['sent']}", f"{s['hit_rate']:.1%}", s["ttft_p50_ms"], s["ttft_p90_ms"], s["ttft_p99_ms"]]
            for p, s in table.items()]  # fmt: skip
    rows.append(["oracle (bound)", "-", f"{oracle:.1%}", "-", "-", "-"])
    ratios: dict[str, float] = {}
    if "precise" in table:
        p90 = table["precise"]["ttft_p90_ms"]
        ratios = {
            f"p90 TTFT {other} / precise": table[other]["ttft_p90_ms"] / p90 for other in table if other != "precise"
        }
        ratios["precise hit rate / oracle"] = table["precise"]["hit_rate"] / oracle
    md = (
        f"# Routing on real engines ({args.replicas} x {MODEL}, vLLM-CPU, {args.kv_cache_gib} GiB KV cache each, "
        f"{args.routers} router replicas)\n\n"
        f"`python -m benchmarks.routing_engines`: {args.tenants} tenants, "
        f"{args.sessions} sessions x {args.turns} turns, contexts 1500-3000 tokens, token-id prompts, "
        "1 output token.\n\n"
        + markdown_table(["policy", "ok/sent", "hit rate", "TTFT p50 ms", "TTFT p90 ms", "TTFT p99 ms"], rows)
        + "\n"
        + markdown_table(["ratio", "value"], [[k, v] for k, v in ratios.items()])
    )
    data = {"args": vars(args), "oracle_hit_rate": oracle, "summary": table, "ratios": ratios, "runs": runs}
    for path in write("routing_engines", data, md, lambda p: plot(runs, p)):
        log(f"wrote {path}")
    print(md)


if __name__ == "__main__":
    main()
