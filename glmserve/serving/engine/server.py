"""The engine deployment: Ray Serve LLM's `LLMServer` (vLLM in-process) with latency-free batching."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncGenerator
from typing import Any

import ray
from ray import serve
from ray.llm._internal.serve.serving_patterns.data_parallel.dp_server import DPServer
from ray.serve.llm import LLMConfig
from ray.serve.llm.deployment import LLMServer
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse
from vllm.exceptions import GracefulHTTPError

from glmserve.common import tracing
from glmserve.router.agent import WorkerAgent
from glmserve.router.replicas import router_replicas
from glmserve.router.types import Load
from glmserve.serving.engine.coalesce import coalesce
from glmserve.serving.engine.kv_usage import KVCacheUsage
from glmserve.serving.engine.membership import Membership
from glmserve.serving.engine.registration import RouterLink
from glmserve.serving.engine.shutdown import finish_kv_transfers


async def _graceful(stream: AsyncGenerator[Any, None], in_flight: list[int]) -> AsyncGenerator[Any, None]:
    """vLLM's admission errors (queue full → 503) as error responses.

    Raised, they would reach the ingress as an opaque 500: their constructors take no
    arguments, so Ray cannot pickle them across the actor boundary.
    """
    in_flight[0] += 1
    try:
        async for item in stream:
            yield item
    except GracefulHTTPError as exc:
        status = int(exc.http_status)
        yield ErrorResponse(error=ErrorInfo(message=exc.message, type=exc.http_status.phrase, code=status))
    finally:
        in_flight[0] -= 1


class EngineServer(LLMServer):
    """One vLLM engine replica: Ray Serve LLM's, plus core pinning and latency-free batching."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits async constructors
        self,
        llm_config: LLMConfig,
        *,
        cpu_binds: list[str] | None = None,
        router: RouterLink | None = None,
        **kwargs: Any,
    ) -> None:
        context = serve.get_replica_context()
        rank = context.rank.rank
        if cpu_binds:
            # Replicas of one pool share a config; each takes the cores of its own rank.
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_binds[rank % len(cpu_binds)]
        if router is not None:
            llm_config.update_engine_kwargs(kv_events_config=router.kv_events_config(rank))
        if endpoint := tracing.traces_endpoint():
            # vLLM exports its request spans itself, under the ingress's traceparent. It reads only
            # the traces protocol variable (defaulting to grpc, where the SDK defaults to http/protobuf)
            # and names no service.
            os.environ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = tracing.traces_protocol()
            os.environ.setdefault("OTEL_SERVICE_NAME", f"glmserve-{context.deployment.partition(':')[0].lower()}")
            llm_config.update_engine_kwargs(otlp_traces_endpoint=endpoint)
        self._in_flight = [0]
        await super().__init__(llm_config, **kwargs)
        self._agent: asyncio.Task[None] | None = None
        self._membership: Membership | None = None
        self._kv_usage: KVCacheUsage | None = None
        if router is not None:
            self._announcement = functools.partial(self._announce, router, context.replica_id.unique_id, rank)
            self._join_router()
            # Serve stops a replica by draining it, then calling __del__: leaving the router when
            # the drain starts keeps new requests off it while its streams finish.
            self._membership = Membership(context.replica_id, self._leave_router, self._join_router)

    def _join_router(self) -> None:
        self._agent = asyncio.create_task(self._announcement())

    def _leave_router(self) -> None:
        if self._agent is not None:
            self._agent.cancel()  # the agent deregisters on its way out

    async def _announce(self, router: RouterLink, worker_id: str, rank: int) -> None:
        vllm_config = self.engine._engine_client.vllm_config  # type: ignore[union-attr]
        max_running = vllm_config.scheduler_config.max_num_seqs
        cache = vllm_config.cache_config
        worker = router.worker(
            worker_id,
            ray.util.get_node_ip_address(),
            rank,
            cache.block_size,
            max_running,
            cache_blocks=cache.num_gpu_blocks or 0,
        )

        if self._kv_usage is None:  # once: the replica may leave the router and join again
            self._kv_usage = KVCacheUsage.attach(self.engine._engine_client)  # type: ignore[union-attr]
        kv_usage = self._kv_usage

        def load() -> Load:
            in_flight = self._in_flight[0]
            return Load(
                running=min(in_flight, max_running),
                waiting=max(0, in_flight - max_running),
                kv_cache_usage=kv_usage.value if kv_usage is not None else 0.0,
            )

        await WorkerAgent(lambda: router_replicas(router.routers), worker, load).run()

    async def __del__(self) -> None:
        # Deregister (if the drain's start did not already), so no work arrives while vLLM stops.
        membership = getattr(self, "_membership", None)
        if membership is not None:
            membership.stop()
        agent = getattr(self, "_agent", None)
        if agent is not None:
            agent.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await agent
        engine = getattr(self, "engine", None)
        if engine is not None:
            await finish_kv_transfers(engine._engine_client)
        await super().__del__()

    def _batch_output_stream(self, generator: AsyncGenerator[Any, None]) -> AsyncGenerator[list[Any], None]:
        # Ray Serve LLM's stream_batching_interval_ms, as the minimum gap between batches.
        return coalesce(generator, self._get_batch_interval_ms() / 1000)

    async def _run_request(self, request: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        return _graceful(await super()._run_request(request, **kwargs), self._in_flight)

    async def abort(self, request: ChatCompletionRequest | CompletionRequest) -> None:
        """Ends `request`, a stream running here, as vLLM ends one whose client left, except that its
        stream is not cut: it ends as a finished one does, with the usage of every token the engine
        generated for it (those not yet sent too), for the caller that still reads it. An unknown
        or finished request is ignored."""
        # The ids vLLM's OpenAI layer gives the engine: its prefix and the body's request_id.
        kind = "chatcmpl" if isinstance(request, ChatCompletionRequest) else "cmpl"
        await self.engine._engine_client.abort(f"{kind}-{request.request_id}")  # type: ignore[union-attr]


class DataParallelEngineServer(EngineServer, DPServer):
    """One data-parallel rank of a replica spanning several nodes: Ray Serve LLM's gang-scheduled
    DPServer (rank 0 hosts vLLM's DP coordinator) with this module's batching."""
