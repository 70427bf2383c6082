"""One request through the engine pools: remote prefill when disaggregated, then the decode
(or colocated) engine, its answer shaped into JSON, an SSE stream or an error."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from vllm.entrypoints.generate.base.protocol import StreamOptions
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

from glmserve.common.errors import BackendError, GlmserveError, OverloadedError
from glmserve.serving.ingress.metrics import RequestTimer
from glmserve.serving.ingress.pd import PrefillRejected, remote_prefill
from glmserve.serving.ingress.responses import Usage, glm_message_fields, sse_stream

log = logging.getLogger("glmserve.ingress")

# Called once when a request ends, with its HTTP status and token counts.
Done = Callable[[int, Usage], None]


@dataclass(frozen=True, slots=True)
class EngineError:
    status: int
    message: str
    param: str | None
    retry_after_s: float | None

    @classmethod
    def of(cls, error: Any, retry_after_s: float) -> EngineError:
        status = int(error.code) if str(error.code).isdigit() else 500
        return cls(status, error.message, error.param, retry_after_s if status in (429, 503) else None)


@dataclass(slots=True)
class EngineReply:
    error: EngineError | None = None
    body: dict[str, Any] | None = None
    usage: Usage = field(default_factory=Usage)
    stream: Callable[[Done], AsyncIterator[bytes]] | None = None


class EngineCall:
    def __init__(self, decode: DeploymentHandle, prefill: DeploymentHandle | None, retry_after_s: float) -> None:
        self._decode = decode.options(stream=True)
        self._prefill = prefill.options(stream=True) if prefill is not None else None
        self._retry_after_s = retry_after_s

    async def check_health(self) -> None:
        for pool in (self._decode, self._prefill):
            if pool is not None:
                await pool.options(stream=False).check_health.remote()

    async def run(self, endpoint: str, body: Any, prompt: list[int], timer: RequestTimer) -> EngineReply:
        wants_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
        if body.stream:
            # The platform needs token counts for every request; the client sees usage only if it asked.
            body.stream_options = StreamOptions(include_usage=True)
        # The engine reuses the ingress's tokens instead of templating and tokenizing again.
        transfer: dict[str, Any] = {"prompt_token_ids": prompt}
        if self._prefill is not None:
            timer.begin("prefill")
            try:
                prefilled = await remote_prefill(self._prefill, endpoint, body, prompt)
            except PrefillRejected as rejected:
                return EngineReply(error=EngineError.of(rejected.error, self._retry_after_s))
            timer.prefilled(prefilled.fallback, prefilled.worker)
            transfer |= prefilled.kv_transfer_params or {}
        timer.begin("decode" if self._prefill is not None else "generate")
        body.kv_transfer_params = transfer
        stream: DeploymentResponseGenerator = getattr(self._decode, endpoint).remote(body)
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            raise BackendError("the engine ended the request without a response") from None
        except Exception as exc:
            raise self._engine_exception(exc, body.model or "") from exc
        item = first[0] if isinstance(first, list) else first
        if isinstance(item, ErrorResponse):
            return EngineReply(error=EngineError.of(item.error, self._retry_after_s))
        if not body.stream:
            content = glm_message_fields(item.model_dump())
            timer.tokens_sent(1)
            return EngineReply(body=content, usage=Usage.from_dict(content.get("usage")))

        async def relay(done: Done) -> AsyncIterator[bytes]:
            async def batches() -> AsyncIterator[list[str]]:
                yield first
                async for batch in stream:
                    yield batch

            usage = Usage()
            status = 499  # nginx's "client closed request", if the client goes away first
            try:
                async for chunk in sse_stream(
                    batches(), client_wants_usage=wants_usage, usage=usage, on_events=timer.tokens_sent
                ):
                    if chunk.endswith(b"data: [DONE]\n\n"):
                        status = 200  # all was sent; a client closing now has not cut the answer short
                    yield chunk
                status = 200
            finally:
                stream.cancel()
                done(status, usage)

        return EngineReply(stream=relay)

    def _engine_exception(self, exc: Exception, model: str) -> GlmserveError:
        """Failures of the call itself; errors the engine reports arrive as ErrorResponse instead."""
        if isinstance(exc, BackPressureError | DeploymentUnavailableError):
            return OverloadedError(
                f"all {model} engine replicas are busy; retry shortly", retry_after_s=self._retry_after_s
            )
        cause = getattr(exc, "cause", None) or exc
        log.error("engine call for %s failed: %r", model, cause)
        return BackendError(f"the {model} engine failed ({type(cause).__name__}); the request was not completed")
