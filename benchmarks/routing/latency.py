"""Route latency and throughput of the real router process, with 64 workers' worth of KV index.

The router runs as `glmserve router serve` in its own process. 64 simulated engines register over
gRPC and publish vLLM-format KV events over ZMQ until the index holds every block: 16 tenants with
a 4K-token context each, on 4 workers per tenant, and 60 sessions per worker that continue the
context to 8K tokens (about 1M (worker, block) entries at block size 16). Then requests arrive
open-loop at a fixed rate, each completed as soon as it is routed: 8K-token prompts, 10% never
seen before, 90% turns of agentic sessions. A session has 10 turns, taken in order and mixed
with other sessions' turns; turn t is the conversation cached on the worker up to
7168 + 96 t tokens, then new tokens up to 8K. So a router replica sees each session's prefix first
on its first turn (the case where the whole cached prefix must be hashed) and then only the
tokens each turn adds.

Reported: the latency the caller sees (gRPC round trip, on the same machine), the router's own
decision time (its route-duration histogram, bucketed), an exact in-process distribution of the
same decisions without gRPC, and closed-loop throughput.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.sim.publisher import EnginePublisher
from benchmarks.sim.vllm_events import block_stored, encode_batch
from glmserve.router import convert
from glmserve.router.config import RouterConfig
from glmserve.router.events import decode_batch
from glmserve.router.hashing import BlockHasher
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.proto import router_pb2_grpc as pb_grpc
from glmserve.router.router import Router
from glmserve.router.types import Load, RouteQuery, Usage, WorkerInfo

MODEL = "glm-4.6"
WORKERS = 64
TENANTS = 16
BLOCK = 16
CONTEXT_TOKENS = 4096
PROMPT_TOKENS = 8192
VOCAB = 151_552
TURNS = 10
ACTIVE_SESSIONS = 200
ROUTE = "/glmserve.router.v1.Router/Route"
COMPLETE = "/glmserve.router.v1.Router/Complete"
Batches = list[list[dict[str, Any]]]  # one engine's event batches
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Corpus:
    contexts: list[np.ndarray]  # per tenant
    sessions: list[list[np.ndarray]]  # per worker: 8K-token conversations it has cached

    def tenant_of(self, worker: int) -> int:
        return worker % TENANTS


def corpus(sessions_per_worker: int, seed: int) -> Corpus:
    rng = np.random.default_rng(seed)
    contexts = [rng.integers(0, VOCAB, CONTEXT_TOKENS, dtype=np.uint32) for _ in range(TENANTS)]
    sessions = [
        [
            np.concatenate(
                [contexts[w % TENANTS], rng.integers(0, VOCAB, PROMPT_TOKENS - CONTEXT_TOKENS, dtype=np.uint32)]
            )
            for _ in range(sessions_per_worker)
        ]
        for w in range(WORKERS)
    ]
    return Corpus(contexts, sessions)


def requests(c: Corpus, n: int, seed: int) -> tuple[list[np.ndarray], list[bool]]:
    """n 8K-token prompts and whether each one's cached prefix is new to the router."""
    rng = np.random.default_rng(seed + 1)
    pool = [(w, s) for w in range(WORKERS) for s in range(len(c.sessions[w]))]
    order = rng.permutation(len(pool))
    live: list[tuple[int, int, int]] = []  # (worker, session, next turn)
    prompts, first = [], []
    for _ in range(n):
        if rng.random() < 0.1:
            prompts.append(rng.integers(0, VOCAB, PROMPT_TOKENS, dtype=np.uint32))
            first.append(True)
            continue
        if len(live) < ACTIVE_SESSIONS:
            w, s = pool[order[len(prompts) % len(pool)]]
            live.append((w, s, 0))
        k = int(rng.integers(len(live)))
        w, s, turn = live[k]
        live[k] = (w, s, turn + 1)
        if turn + 1 == TURNS:
            live.pop(k)
        cached = PROMPT_TOKENS - 1024 + 96 * turn
        fresh = rng.integers(0, VOCAB, PROMPT_TOKENS - cached, dtype=np.uint32)
        prompts.append(np.concatenate([c.sessions[w][s][:cached], fresh]))
        first.append(turn == 0)
    return prompts, first


def worker_events(c: Corpus, worker: int, hasher: BlockHasher) -> Batches:
    """The event batches an engine holding the worker's context and sessions would have sent."""
    context = c.contexts[c.tenant_of(worker)]
    ctx_hashes = hasher.block_hashes(context, BLOCK)
    batches = [[block_stored(ctx_hashes, context.tolist(), BLOCK)]]
    for session in c.sessions[worker]:
        hashes = hasher.block_hashes(session, BLOCK)[len(ctx_hashes) :]
        batches.append([block_stored(hashes, session[CONTEXT_TOKENS:].tolist(), BLOCK, ctx_hashes[-1])])
    return batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _histogram(text: str, name: str) -> list[tuple[float, float]]:
    return [
        (float("inf") if le == "+Inf" else float(le), float(v))
        for le, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)
    ]


def _bucket_quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float:
    """Prometheus's histogram_quantile over the observations between two scrapes."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1]
    rank, lower, below = q * total, 0.0, 0.0
    for le, cumulative in counts:
        if cumulative >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(cumulative - below, 1e-12)
        lower, below = le, cumulative
    return lower


def _percentiles(samples: list[float]) -> dict[str, float]:
    a = np.array(samples) * 1e3
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
        "n": len(a),
    }


class RouterProcess:
    def __init__(self) -> None:
        self.port, self.metrics_port = _free_port(), _free_port()
        self._dir = tempfile.TemporaryDirectory()
        config = Path(self._dir.name) / "router.yaml"
        config.write_text(
            f"host: 127.0.0.1\nmetrics_port: {self.metrics_port}\n"
            "workers: {heartbeat_interval_s: 60, lease_s: 3600, forget_after_s: 7200}\n"
        )
        env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        command = [sys.executable, "-m", "glmserve.cli.main", "router", "serve", "--config", str(config)]
        self.proc = subprocess.Popen([*command, "--port", str(self.port)], env=env, stderr=subprocess.DEVNULL)
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._dir.cleanup()


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
        while (held := _metric(_scrape(router.metrics_port), "glmserve_router_index_blocks")) < expected:
            log(f"index: {held:,.0f} of {expected:,} (worker, block) entries")
            if time.monotonic() > deadline:
                raise RuntimeError("the router did not index every published block in 10 minutes")
            time.sleep(2)
    finally:
        for publisher in publishers:  # the index stays; quiet publishers leave the CPU to the router
            publisher.close()
    return expected


async def open_loop(port: int, prompts: list[np.ndarray], rate: float) -> tuple[list[float], float, int]:
    """Sends Route at `rate` per second regardless of replies; returns latencies, the achieved
    rate and the failures."""
    payloads = [
        pb.RouteRequest(request_id=f"r{i}", tenant="t", model=MODEL, prompt_token_ids=p.tolist()).SerializeToString()
        for i, p in enumerate(prompts)
    ]
    completes = [pb.CompleteRequest(request_id=f"r{i}").SerializeToString() for i in range(len(prompts))]
    latencies: list[float] = [0.0] * len(prompts)
    failures = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 2**26)]) as ch:
        route = ch.unary_unary(ROUTE)
        complete = ch.unary_unary(COMPLETE)

        async def one(i: int) -> None:
            nonlocal failures
            started = time.perf_counter()
            try:
                await route(payloads[i], timeout=10)
                latencies[i] = time.perf_counter() - started
                await complete(completes[i], timeout=10)
            except grpc.RpcError:
                failures += 1

        start = time.perf_counter()
        tasks = []
        for i in range(len(prompts)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return [x for x in latencies if x], len(prompts) / elapsed, failures


async def closed_loop(port: int, prompts: list[np.ndarray], concurrency: int, seconds: float) -> float:
    """Route calls per second with `concurrency` callers back to back."""
    payloads = [
        pb.RouteRequest(request_id=f"c{i}", model=MODEL, prompt_token_ids=p.tolist()).SerializeToString()
        for i, p in enumerate(prompts)
    ]
    done = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 2**26)]) as ch:
        route = ch.unary_unary(ROUTE)
        complete = ch.unary_unary(COMPLETE)
        deadline = time.perf_counter() + seconds

        async def caller(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < deadline:
                await route(payloads[i % len(payloads)], timeout=10)
                await complete(pb.CompleteRequest(request_id=f"c{i % len(payloads)}").SerializeToString(), timeout=10)
                done += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        return done / (time.perf_counter() - started)


def in_process(events: list[Batches], prompts: list[np.ndarray]) -> list[float]:
    """The same decisions in this process without gRPC or ZMQ: Router.route alone, timed exactly."""
    router = Router(RouterConfig(workers={"heartbeat_interval_s": 60, "lease_s": 3600, "forget_after_s": 7200}))
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


def run(rate: float, seconds: float, sessions_per_worker: int, log: Log, seed: int = 0) -> dict[str, object]:
    c = corpus(sessions_per_worker, seed)
    hasher = BlockHasher()
    log(f"hashing {WORKERS} workers' caches ({WORKERS * (sessions_per_worker + 1)} conversations)")
    events = [worker_events(c, w, hasher) for w in range(WORKERS)]
    prompts, first = requests(c, int(rate * seconds), seed)
    router = RouterProcess()
    try:
        entries = fill_index(router, events, log)
        log(f"index holds {entries:,} entries; {len(prompts)} Route calls at {rate:.0f}/s")
        before = _histogram(_scrape(router.metrics_port), "glmserve_router_route_duration_seconds")
        latencies, achieved, failures = asyncio.run(open_loop(router.port, prompts, rate))
        after = _histogram(_scrape(router.metrics_port), "glmserve_router_route_duration_seconds")
        log("closed loop: max Route throughput")
        throughput = asyncio.run(closed_loop(router.port, prompts[:2000], concurrency=16, seconds=5))
    finally:
        router.close()
    log("the same decisions in-process, without gRPC")
    exact = in_process(events, prompts)
    new = [lat for lat, f in zip(latencies, first, strict=False) if f]
    repeat = [lat for lat, f in zip(latencies, first, strict=False) if not f]
    return {
        "workers": WORKERS,
        "index_entries": entries,
        "prompt_tokens": PROMPT_TOKENS,
        "block_size": BLOCK,
        "rate_per_s": rate,
        "achieved_rate_per_s": achieved,
        "failures": failures,
        "client_grpc": _percentiles(latencies),
        "client_grpc_first_sighting": _percentiles(new),
        "client_grpc_repeat_prefix": _percentiles(repeat),
        "server_decision_bucketed": {f"p{q}_ms": _bucket_quantile(before, after, q / 100) * 1e3 for q in (50, 90, 99)},
        "in_process_decision": _percentiles(exact),
        "closed_loop_throughput_per_s": throughput,
        "cpu_cores": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
