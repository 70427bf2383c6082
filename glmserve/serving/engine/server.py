"""The engine deployment: Ray Serve LLM's `LLMServer` (vLLM in-process) with latency-free batching."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from ray.serve.llm.deployment import LLMServer

from glmserve.serving.engine.coalesce import coalesce


class EngineServer(LLMServer):
    """One vLLM engine replica. Everything but the stream batching is Ray Serve LLM's."""

    def _batch_output_stream(self, generator: AsyncGenerator[Any, None]) -> AsyncGenerator[list[Any], None]:
        return coalesce(generator)
