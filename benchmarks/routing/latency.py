"""Admit + queue + route latency and throughput of the real router process, with 64 workers' worth
of KV index, for today's router (the `main` branch, run from a copy of its tree) and this tree's in
the same run.

Each router runs as `glmserve router serve` in its own process, with 16 tenants (limits high enough
never to bind) and a real redis-server: every Route is admitted against its tenant's plan in Redis,
takes a flow-control slot and is routed; every Complete settles its admission. 64 simulated
engines register over gRPC and publish vLLM-format KV events over ZMQ until the index holds every
block they hold (corpus.py), then Route + Complete calls arrive open-loop at a fixed rate.

Reported: the latency the caller sees (gRPC round trip, on the same machine), the router's own
decision time (its route-duration histogram, bucketed), the garbage collections that paused the
router for over a millisecond during each run, an exact in-process distribution of the same
decisions without gRPC (this tree's code), and closed-loop throughput.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import redis
import yaml

from benchmarks.baseline import ROOT, baseline_tree
from benchmarks.routing.corpus import (
    BLOCK,
    PROMPT_TOKENS,
    TENANTS,
    WORKERS,
    Batches,
    corpus,
    requests,
    worker_events,
)
from benchmarks.routing.load import closed_loop, has_session, open_loop
from benchmarks.routing.router_process import RouterProcess, bucket_quantile, histogram, metric, percentiles, scrape
from benchmarks.sim.publisher import EnginePublisher
from benchmarks.sim.vllm_events import encode_batch
from glmserve.common.tenancy import hash_api_key
from glmserve.router import convert
from glmserve.router.config import RouterConfig
from glmserve.router.events import decode_batch
from glmserve.router.hashing import BlockHasher
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.proto import router_pb2_grpc as pb_grpc
from glmserve.router.router import Router
from glmserve.router.types import Load, RouteQuery, Usage, WorkerInfo
from tests.admission.redis_server import RedisServer

MODEL = "glm-4.6"
Log = Callable[[str], None]


def _worker(w: int, publisher: EnginePublisher | None = None) -> WorkerInfo:
    return WorkerInfo(
        f"w{w:02d}",
        "decode",
        MODEL,
        kv_events_endpoint=publisher.endpoint if publisher else "",
        kv_replay_endpoint=publisher.replay_endpoint if publisher else "",
        block_size=BLOCK,
        max_running_requests=1_000_000,  # latency, not admission, is measured here
    )


def fill_index(router: RouterProcess, events: list[Batches], log: Log) -> int:
    expected = sum(len(e["block_hashes"]) for batches in events for batch in batches for e in batch)
    publishers = [EnginePublisher() for _ in range(WORKERS)]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            stub = pb_grpc.RouterStub(channel)
            for w, publisher in enumerate(publishers):
                stub.Register(pb.RegisterRequest(worker=convert.worker_to_pb(_worker(w, publisher))), timeout=10)
        for publisher, batches in zip(publishers, events, strict=True):
            for batch in batches:
                publisher.publish(batch)
        deadline = time.monotonic() + 600
        while (held := metric(scrape(router.metrics_port), "glmserve_router_index_blocks")) < expected:
            log(f"index: {held:,.0f} of {expected:,} (worker, block) entries")
            if time.monotonic() > deadline:
                raise RuntimeError("the router did not index every published block in 10 minutes")
            time.sleep(2)
    finally:
        for publisher in publishers:  # the index stays; quiet publishers leave the CPU to the router
            publisher.close()
    return expected


def in_process(events: list[Batches], prompts: list[np.ndarray]) -> list[float]:
    """The same decisions in this process without gRPC or ZMQ: Router.route alone, timed exactly."""
    router = Router(
        RouterConfig.model_validate({"workers": {"heartbeat_interval_s": 60, "lease_s": 3600, "forget_after_s": 7200}})
    )
    for w, batches in enumerate(events):
        router.register(_worker(w), Load())
        for batch in batches:
            router.apply_events(f"w{w:02d}", decode_batch(b"\0" * 8, encode_batch(0.0, batch)).events)
    timings = []
    for i, prompt in enumerate(prompts):
        started = time.perf_counter()
        router.route(RouteQuery(f"r{i}", "t", MODEL, prompt))
        timings.append(time.perf_counter() - started)
        router.complete(f"r{i}", "finished", Usage())
    return timings


def _at_rate(
    router: RouterProcess, prompts: list[np.ndarray], first: list[bool], rate: float, tenants: list[str]
) -> dict[str, Any]:
    histogram_name = "glmserve_router_route_duration_seconds"
    before, cpu = histogram(scrape(router.metrics_port), histogram_name), router.cpu_s()
    started = time.time()
    latencies, sent, failures = open_loop(router.port, prompts, rate, MODEL, tenants)
    pauses = router.gc_pauses(started, time.time())
    after, cpu = histogram(scrape(router.metrics_port), histogram_name), router.cpu_s() - cpu
    by_first = {f: [lat for lat, g in zip(latencies, first, strict=False) if g == f] for f in (True, False)}
    return {
        "rate_per_s": rate,
        "sent_per_s": sent,
        "failures": dict(Counter(failures)),
        "grpc_round_trip": percentiles(latencies),
        "grpc_round_trip_prefix_first_seen": percentiles(by_first[True]),
        "grpc_round_trip_prefix_seen_before": percentiles(by_first[False]),
        "decision_bucketed": {f"p{q}_ms": bucket_quantile(before, after, q / 100) * 1e3 for q in (50, 90, 99)},
        "router_cpu_ms_per_request": cpu / len(prompts) * 1e3,
        "gc_pauses": {"count": len(pauses), "max_ms": max(pauses, default=0.0) * 1e3, "total_ms": sum(pauses) * 1e3},
    }


def tenants_file(directory: Path) -> Path:
    """TENANTS tenants on one plan whose limits never bind here: admission does all its work (a
    Redis script per request, a concurrency lease, a settlement) and refuses nothing."""
    plan = {
        "name": "bench",
        "priority": "standard",
        "requestsPerMinute": 10_000_000,
        "inputTokensPerMinute": 100_000_000_000,
        "maxConcurrentRequests": 100_000,
    }
    tenants = [
        {"id": f"t{t}", "plan": "bench", "apiKeys": [{"sha256": hash_api_key(f"sk-bench-{t:02d}-0123456789")}]}
        for t in range(TENANTS)
    ]
    path = directory / "tenants.yaml"
    path.write_text(yaml.safe_dump({"plans": [plan], "tenants": tenants}))
    return path


def _one_router(
    tree: Path,
    admission: dict[str, Any],
    events: list[Batches],
    loads: list[tuple[list[np.ndarray], list[bool]]],
    *,
    rates: tuple[float, ...],
    log: Log,
) -> dict[str, Any]:
    tenants = [f"t{t}" for t in range(TENANTS)]
    router = RouterProcess(tree, admission)
    try:
        entries = fill_index(router, events, log)
        session = has_session(router.port)
        sweep = []
        for r, (prompts, first) in zip(rates, loads, strict=True):
            log(f"index holds {entries:,} entries; {len(prompts)} Route + Complete at {r:.0f}/s")
            sweep.append(_at_rate(router, prompts, first, r, tenants))
        log("closed loop: Route + Complete throughput with 16 callers")
        prompts = loads[-1][0][:2000]
        throughput = closed_loop(router.port, prompts, callers=16, seconds=5, model=MODEL, tenants=tenants)
    finally:
        router.close()
    return {
        "index_entries": entries,
        "transport": "session" if session else "unary",
        "open_loop": sweep,
        "closed_loop_per_s": throughput,
    }


def routers(baseline_ref: str, log: Log) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """(name, tree, the config's admission section) of today's router (a copy of `baseline_ref`'s
    tree, where git has it) and this tree's, one after the other, both admitting against one real
    redis-server, emptied before each."""
    with tempfile.TemporaryDirectory(prefix="routing-routers-") as tmp:
        work = Path(tmp)
        (work / "redis").mkdir()
        (work / "baseline").mkdir()
        trees = [("new", ROOT)]
        baseline = baseline_tree(baseline_ref, work / "baseline")
        if baseline is not None:
            trees.insert(0, ("today", baseline))
        server = RedisServer(work / "redis")
        server.start()
        try:
            admission = {"tenants_file": str(tenants_file(work)), "redis_url": server.url}
            for name, tree in trees:
                with redis.Redis.from_url(server.url) as client:
                    client.flushall()
                log(f"{name}'s router ({tree})")
                yield name, tree, admission
        finally:
            server.stop()


def run(
    rate: float, seconds: float, sessions_per_worker: int, log: Log, *, seed: int = 0, baseline_ref: str = "main"
) -> dict[str, Any]:
    """For today's router and this tree's: open-loop runs at rate / 5, rate / 2 and rate (fresh
    requests each) and closed-loop throughput, admission on; then this tree's exact in-process
    decision latency."""
    c = corpus(sessions_per_worker, seed)
    hasher = BlockHasher()
    log(f"hashing {WORKERS} workers' caches ({WORKERS * (sessions_per_worker + 1)} conversations)")
    events = [worker_events(c, w, hasher) for w in range(WORKERS)]
    rates = (rate / 5, rate / 2, rate)
    loads = [requests(c, int(r * seconds), seed + i) for i, r in enumerate(rates)]
    codes: dict[str, Any] = {}
    for name, tree, admission in routers(baseline_ref, log):
        codes[name] = _one_router(tree, admission, events, loads, rates=rates, log=log)
    log("the same decisions in-process, without gRPC")
    return {
        "workers": WORKERS,
        "tenants": TENANTS,
        "prompt_tokens": PROMPT_TOKENS,
        "block_size": BLOCK,
        "baseline_ref": baseline_ref,
        "codes": codes,
        "in_process_decision": percentiles(in_process(events, loads[-1][0])),
        "cpu_cores": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
