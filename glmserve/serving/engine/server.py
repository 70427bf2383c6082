"""The engine deployment: Ray Serve LLM's `LLMServer` (vLLM in-process) with latency-free batching."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import Any

from ray import serve
from ray.llm._internal.serve.serving_patterns.data_parallel.dp_server import DPServer
from ray.serve.llm import LLMConfig
from ray.serve.llm.deployment import LLMServer
from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse
from vllm.exceptions import GracefulHTTPError

from glmserve.serving.engine.coalesce import coalesce


async def _graceful(stream: AsyncGenerator[Any, None]) -> AsyncGenerator[Any, None]:
    """vLLM's admission errors (queue full → 503) as error responses.

    Raised, they would reach the ingress as an opaque 500: their constructors take no
    arguments, so Ray cannot pickle them across the actor boundary.
    """
    try:
        async for item in stream:
            yield item
    except GracefulHTTPError as exc:
        status = int(exc.http_status)
        yield ErrorResponse(error=ErrorInfo(message=exc.message, type=exc.http_status.phrase, code=status))


class EngineServer(LLMServer):
    """One vLLM engine replica: Ray Serve LLM's, plus core pinning and latency-free batching."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits async constructors
        self, llm_config: LLMConfig, *, cpu_binds: list[str] | None = None, **kwargs: Any
    ) -> None:
        if cpu_binds:
            # Replicas of one pool share a config; each takes the cores of its own rank.
            rank = serve.get_replica_context().rank.rank
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_binds[rank % len(cpu_binds)]
        await super().__init__(llm_config, **kwargs)

    def _batch_output_stream(self, generator: AsyncGenerator[Any, None]) -> AsyncGenerator[list[Any], None]:
        return coalesce(generator)

    async def _run_request(self, request: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        return _graceful(await super()._run_request(request, **kwargs))


class DataParallelEngineServer(EngineServer, DPServer):
    """One data-parallel rank of a replica spanning several nodes: Ray Serve LLM's gang-scheduled
    DPServer (rank 0 hosts vLLM's DP coordinator) with this module's batching."""
