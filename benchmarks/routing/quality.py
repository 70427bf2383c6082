"""Routing quality: one seeded workload, every policy, the same simulated cluster.

Scenarios:
- agentic-4-ingress: the deployment glmserve runs (several ingress replicas, each asking its own
  router replica) with KV caches under moderate pressure: all tenants' contexts and live sessions
  fit in the cluster's caches but not in one engine's. The goals are judged here.
- single-router-roomy: one router and roomy caches, the approximate policy's best case: its
  routing history then matches the engines' caches, so it should do as well as precise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from benchmarks.sim.cluster import Cluster, ClusterConfig
from benchmarks.sim.engine import EngineModel
from benchmarks.workload import WorkloadConfig, generate

POLICIES = ("precise", "approximate", "round-robin", "oracle")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    workload: WorkloadConfig
    cluster: ClusterConfig


def scenarios(quick: bool) -> list[Scenario]:
    scale = 4 if quick else 1
    return [
        Scenario(
            "agentic-4-ingress",
            WorkloadConfig(tenants=16, sessions=300 // scale, session_rate_per_s=2.0),
            ClusterConfig(workers=8, routers=4, engine=EngineModel(cache_blocks=12_000)),
        ),
        Scenario(
            "single-router-roomy",
            WorkloadConfig(tenants=12, sessions=240 // scale, session_rate_per_s=1.0),
            ClusterConfig(workers=8, routers=1, engine=EngineModel(cache_blocks=24_000)),
        ),
    ]


def _progress(label: str, total: int) -> Callable[[int], None]:
    step = max(1, total // 10)

    def report(done: int) -> None:
        if done % step == 0 or done == total:
            print(
                f"\r  {label}: {done}/{total} requests", end="\n" if done == total else "", file=sys.stderr, flush=True
            )

    return report


def run(scenario: Scenario) -> dict[str, object]:
    sessions = generate(scenario.workload)
    total = sum(len(s.turns) for s in sessions)
    results: dict[str, object] = {}
    for policy in POLICIES:
        started = time.perf_counter()
        cluster = Cluster(policy, scenario.cluster, _progress(f"{scenario.name} {policy}", total))
        served = cluster.run(sessions)
        ttft = np.array([s.ttft_s for s in served])
        busy = [e.busy_s / cluster.loop.now for e in cluster.engines.values()]
        results[policy] = {
            "requests": len(served),
            "hit_rate": sum(s.cached_tokens for s in served) / sum(s.prompt_tokens for s in served),
            "ttft_s": {q: float(np.percentile(ttft, int(q[1:]))) for q in ("p50", "p90", "p99")}
            | {"mean": float(ttft.mean())},
            "prefill_busy": {"mean": float(np.mean(busy)), "max": float(np.max(busy))},
            # The TTFT distribution at every half percentile, for the CDF plot.
            "ttft_quantiles_s": np.percentile(ttft, np.linspace(0, 100, 201)).tolist(),
            "wall_s": time.perf_counter() - started,
        }
    return {"workload": asdict(scenario.workload), "cluster": asdict(scenario.cluster), "policies": results}
