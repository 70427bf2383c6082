"""A simulated cluster of engines behind glmserve's router, in simulated time.

The routers are the real `glmserve.router.router.Router` (the code the gRPC service runs), on the
simulation's clock, `routers` replicas of it, each request going to one at random (as a Service
spreads ingress traffic). Engines publish vLLM-format event batches that reach every router
`event_lag_s` later and are decoded by the router's own decoder; they heartbeat their load to
every router each second; the ingress's part (Route; Complete at the first token and at the end)
is played by `Cluster`.

Policies: precise, approximate, least-load and round-robin are the router's own. The oracle is the
precise pipeline told everything at once: events without lag, and the blocks a request will store
as soon as it is routed (so it also knows what prefills in flight will cache). It runs as one
router: its hit rate is the best this scoring can reach on the workload.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.sim.engine import EngineModel, Job, SimEngine
from benchmarks.sim.loop import EventLoop
from benchmarks.workload import Session
from glmserve.common.errors import OverloadedError
from glmserve.router.config import RouterConfig
from glmserve.router.events import BlockStored, decode_batch
from glmserve.router.hashing import BlockHasher
from glmserve.router.router import Router
from glmserve.router.types import Load, RouteQuery, Usage, WorkerInfo

POLICIES = ("precise", "approximate", "round-robin", "least-load", "oracle")
HEARTBEAT_S = 1.0
OVERLOAD_RETRY_S = 0.05
MODEL = "glm-4.6"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    workers: int = 8
    routers: int = 1
    engine: EngineModel = field(default_factory=EngineModel)
    event_lag_s: float = 0.01  # engine step -> ZMQ -> router index
    seed: int = 0  # which router replica each request reaches


@dataclass(frozen=True, slots=True)
class Served:
    request_id: str
    tenant: str
    worker_id: str
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float


class Cluster:
    def __init__(self, policy: str, cfg: ClusterConfig, progress: Callable[[int], None] = lambda n: None) -> None:
        self.policy = policy
        self.cfg = cfg
        self.loop = EventLoop()
        self.served: list[Served] = []
        self._progress = progress
        m = cfg.engine
        router_config = {
            "policy": "precise" if policy == "oracle" else policy,
            "workers": {"heartbeat_interval_s": HEARTBEAT_S, "lease_s": 5 * HEARTBEAT_S, "forget_after_s": 3600},
            # The approximate baseline gets the engines' true capacity (its best case).
            "approximate": {"capacity_chunks": m.cache_blocks * m.block_size // 64},
        }
        replicas = 1 if policy == "oracle" else cfg.routers
        config = RouterConfig.model_validate(router_config)
        self.routers = [Router(config, clock=lambda: self.loop.now) for _ in range(replicas)]
        self._rng = random.Random(cfg.seed)
        hasher = BlockHasher()
        self.engines = {
            f"w{i:02d}": SimEngine(f"w{i:02d}", m, hasher, self.loop, self._publish) for i in range(cfg.workers)
        }
        for worker_id, router in itertools.product(self.engines, self.routers):
            info = WorkerInfo(worker_id, "decode", MODEL, block_size=m.block_size, max_running_requests=m.max_running)
            router.register(info, Load())
            router.set_index_ready(worker_id, True)
        self._lag = 0.0 if policy == "oracle" else cfg.event_lag_s
        self._unfinished = 0

    def run(self, sessions: list[Session]) -> list[Served]:
        self._unfinished = len(sessions)
        for session in sessions:
            self.loop.at(session.start_s, functools.partial(self._arrive, session, 0, session.start_s))
        self._heartbeat()
        self.loop.run()
        return self.served

    def _heartbeat(self) -> None:
        for (worker_id, engine), router in itertools.product(self.engines.items(), self.routers):
            router.heartbeat(worker_id, Load(engine.running, engine.waiting, engine.kv_cache_usage))
        if self._unfinished:
            self.loop.after(HEARTBEAT_S, self._heartbeat)

    def _publish(self, worker_id: str, payload: bytes) -> None:
        batch = decode_batch((0).to_bytes(8, "big"), payload)
        for router in self.routers:
            self.loop.after(self._lag, functools.partial(router.apply_events, worker_id, batch.events))

    def _arrive(self, session: Session, k: int, arrival_s: float) -> None:
        request_id = f"{session.session_id}-t{k}"
        prompt = session.prompt(k)
        query = RouteQuery(request_id, session.tenant, MODEL, prompt, cache_salt=session.tenant)
        router = self._rng.choice(self.routers)
        try:
            decision = router.route(query)
        except OverloadedError:
            self.loop.after(OVERLOAD_RETRY_S, lambda: self._arrive(session, k, arrival_s))
            return
        engine = self.engines[decision.decode.worker_id]
        if self.policy == "oracle":
            hashes = router.hasher.block_hashes(prompt, engine.model.block_size, session.tenant)
            router.apply_events(engine.worker_id, [BlockStored(tuple(hashes), engine.model.block_size)])

        def first_token(job: Job, ttft_s: float, cached: int) -> None:
            router.complete(request_id, "prefill_done", Usage())
            self.served.append(Served(request_id, session.tenant, engine.worker_id, len(prompt), cached, ttft_s))
            self._progress(len(self.served))

        def done(job: Job) -> None:
            router.complete(request_id, "finished", Usage(len(prompt), 0, len(job.output)))
            if k + 1 == len(session.turns):
                self._unfinished -= 1
            else:
                next_s = self.loop.now + session.turns[k].think_s
                self.loop.at(next_s, lambda: self._arrive(session, k + 1, next_s))

        output = session.turns[k].output
        engine.submit(Job(request_id, arrival_s, prompt, session.tenant, output, first_token, done))
