"""Test harness: a real RouterServer on a free port in a background thread, real gRPC stubs,
and simulated engines publishing vLLM-format KV events over real ZMQ sockets."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import numpy as np

from benchmarks.sim.publisher import EnginePublisher
from benchmarks.sim.vllm_events import all_blocks_cleared, block_removed, block_stored
from glmserve.router.config import RouterConfig
from glmserve.router.hashing import BlockHasher
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.proto import router_pb2_grpc as pb_grpc
from glmserve.router.server import RouterServer

MODEL = "glm-4.6-tiny"
BLOCK = 16


def config(**overrides: Any) -> RouterConfig:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": None,
        "workers": {"heartbeat_interval_s": 1, "lease_s": 30, "forget_after_s": 60},
        # Probes would leave expectations behind; tests that need them turn them on.
        "events": {"replay_timeout_s": 1.0, "expect_s": 0},
    }
    return RouterConfig.model_validate(base | overrides)


class ServerThread:
    """A RouterServer on its own event loop thread; tests talk to it only over gRPC."""

    def __init__(self, cfg: RouterConfig, token: str | None = None) -> None:
        self._stopped = False
        self.server = RouterServer(cfg, token=token)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self._call(self.server.start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.RouterStub(self.channel)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def inspect(self, fn: Callable[[RouterServer], Any]) -> Any:
        """Runs `fn` on the server's loop (the router is single-threaded)."""

        async def run() -> Any:
            return fn(self.server)

        return self._call(run())

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.channel.close()
        self._call(self.server.stop(grace_s=0.1))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def tokens(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 4096, n).tolist()


class SimEngine:
    """An engine's cache as the router sees it: full blocks stored and removed via real events."""

    def __init__(self, worker_id: str, *, block_size: int = BLOCK, seed: str | None = None) -> None:
        self.worker_id = worker_id
        self.block_size = block_size
        self.publisher = EnginePublisher()
        self._seed = seed
        self._hasher = BlockHasher(seed) if seed is not None else BlockHasher()

    def hashes(self, prompt: Sequence[int], cache_salt: str = "") -> list[int]:
        return self._hasher.block_hashes(np.array(prompt, dtype=np.uint32), self.block_size, cache_salt)

    def store(self, prompt: Sequence[int], cache_salt: str = "", *, drop: bool = False) -> int:
        hashes = self.hashes(prompt, cache_salt)
        tokens = list(prompt[: len(hashes) * self.block_size])
        return self.publisher.publish([block_stored(hashes, tokens, self.block_size, None, cache_salt)], drop=drop)

    def evict(self, prompt: Sequence[int], from_block: int) -> int:
        return self.publisher.publish([block_removed(self.hashes(prompt)[from_block:])])

    def clear(self) -> int:
        return self.publisher.publish([all_blocks_cleared()])

    def worker(self, *, role: int = pb.ROLE_DECODE, max_running: int = 8, replay: bool = True) -> pb.Worker:
        return pb.Worker(
            worker_id=self.worker_id,
            role=role,
            model=MODEL,
            address=f"addr-{self.worker_id}",
            kv_events_endpoint=self.publisher.endpoint,
            kv_replay_endpoint=self.publisher.replay_endpoint if replay else "",
            block_size=self.block_size,
            max_running_requests=max_running,
        )

    def restart(self) -> None:
        """The engine process restarts on the same endpoints: empty cache, sequence from 0."""
        old = self.publisher
        old.close()
        self.publisher = EnginePublisher(endpoint=old.endpoint, replay_endpoint=old.replay_endpoint)

    def close(self) -> None:
        self.publisher.close()


def register(stub: pb_grpc.RouterStub, engine: SimEngine, **kwargs: Any) -> None:
    stub.Register(pb.RegisterRequest(worker=engine.worker(**kwargs), load=pb.Load()), timeout=5)


def route(stub: pb_grpc.RouterStub, prompt: Sequence[int], request_id: str = "r", **fields: Any) -> pb.RouteResponse:
    fields = {"tenant": "t", "model": MODEL} | fields
    request = pb.RouteRequest(request_id=request_id, prompt_token_ids=prompt, **fields)
    reply: pb.RouteResponse = stub.Route(request, timeout=5)
    return reply


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def probe(stub: pb_grpc.RouterStub, prompt: Sequence[int], request_id: str, **fields: Any) -> pb.RouteResponse:
    """Routes and at once completes a request, so that probing adds no load."""
    reply = route(stub, prompt, request_id, **fields)
    stub.Complete(pb.CompleteRequest(request_id=request_id), timeout=5)
    return reply


def cached_on(stub: pb_grpc.RouterStub, prompt: Sequence[int], worker_id: str, tokens: int) -> Callable[[], bool]:
    """A predicate: the router now routes `prompt` to `worker_id` expecting `tokens` cached. Each
    probe is completed at once so it adds no load."""
    counter = iter(range(10**9))

    def check() -> bool:
        reply = probe(stub, prompt, f"probe-{next(counter)}")
        return reply.decode.worker_id == worker_id and reply.expected_cached_tokens == tokens

    return check
