"""One admitted request through the engine pools: remote prefill when disaggregated, then the
decode (or colocated) engine, its answer shaped into a reply: an error, a body or an SSE stream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from opentelemetry import trace
from ray.llm._internal.serve.core.protocol import RawRequestInfo
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

from glmserve.common import tracing
from glmserve.common.errors import BackendError, GlmserveError, OverloadedError
from glmserve.router.types import Decision
from glmserve.serving.ingress.engine_request import EngineRequest
from glmserve.serving.ingress.errors import error_event
from glmserve.serving.ingress.life import CLIENT_CLOSED, RequestLife
from glmserve.serving.ingress.pd import PrefillRejected, remote_prefill
from glmserve.serving.ingress.reply import Completed, Failed, Reply, Streaming
from glmserve.serving.ingress.responses import Usage, glm_message_fields, sse_stream

log = logging.getLogger("glmserve.ingress")


def _traced(span: trace.Span) -> RawRequestInfo | None:
    """The engine call's request headers: vLLM parents its request span on their `traceparent`."""
    headers = tracing.headers(trace.set_span_in_context(span))
    return RawRequestInfo(headers=headers) if headers else None


class EngineCall:
    def __init__(self, decode: DeploymentHandle, prefill: DeploymentHandle | None, retry_after_s: float) -> None:
        self._decode = decode.options(stream=True)
        self._prefill = prefill.options(stream=True) if prefill is not None else None
        self._retry_after_s = retry_after_s

    async def check_health(self) -> None:
        for pool in (self._decode, self._prefill):
            if pool is not None:
                await pool.options(stream=False).check_health.remote()

    async def run(self, request: EngineRequest, decision: Decision | None, life: RequestLife) -> Reply:
        """`decision`: the router's workers (None: Serve balances both legs). With one, the router
        also decided whether remote prefill is worth it (short uncached prompts prefill on decode)."""
        kv_transfer_params = None
        if self._prefill is not None and (decision is None or decision.prefill is not None):
            target = decision.prefill.worker_id if decision and decision.prefill else None
            span = life.timer.begin("prefill")
            try:
                prefilled = await remote_prefill(
                    self._prefill, request.endpoint, request.prefill_body(target=target), _traced(span)
                )
            except PrefillRejected as rejected:
                return Failed.engine(rejected.error, self._retry_after_s)
            life.timer.prefilled(prefilled.fallback, prefilled.worker)
            kv_transfer_params = prefilled.kv_transfer_params
        span = life.timer.begin("generate" if self._prefill is None else "decode")
        target = decision.decode.worker_id if decision else None
        body = request.engine_body(target=target, kv_transfer_params=kv_transfer_params)
        stream: DeploymentResponseGenerator = getattr(self._decode, request.endpoint).remote(body, _traced(span))
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            raise BackendError("the engine ended the request without a response") from None
        except Exception as exc:
            raise self._engine_exception(exc, request.model) from exc
        except BaseException:  # the client went away while the engine worked: its work stops too
            stream.cancel()
            raise
        item = first[0] if isinstance(first, list) else first
        if isinstance(item, ErrorResponse):
            return Failed.engine(item.error, self._retry_after_s)
        if not request.stream:
            content = glm_message_fields(item.model_dump())
            life.timer.tokens_sent(1)
            return Completed(content, Usage.from_dict(content.get("usage")))
        life.prefill_done()
        return self._streamed(request, stream, first, life)

    def _streamed(
        self, request: EngineRequest, stream: DeploymentResponseGenerator, first: Any, life: RequestLife
    ) -> Streaming:
        """The engine's SSE events relayed to the client; what was delivered is billed from the
        running usage on each chunk until the engine's final usage event."""
        usage = Usage(prompt_tokens=len(request.prompt))

        def end(status: int) -> None:
            if not life.ended:
                stream.cancel()
                life.end(status, usage)

        async def batches() -> AsyncIterator[list[str]]:
            yield first
            async for batch in stream:
                yield batch

        async def relay() -> AsyncIterator[bytes]:
            status = CLIENT_CLOSED  # if the client goes away first
            events = sse_stream(
                batches(),
                client_wants_usage=request.client_wants_usage,
                client_wants_running_usage=request.client_wants_running_usage,
                usage=usage,
                on_events=life.timer.tokens_sent,
            )
            try:
                async for chunk in events:
                    if chunk.endswith(b"data: [DONE]\n\n"):
                        status = 200  # all was sent; a client closing now has not cut the answer short
                    yield chunk
                status = 200
            except Exception as exc:  # the engine's replica died or failed mid-stream
                error = self._engine_exception(exc, request.model)
                status = error.kind.http_status
                yield error_event(error)
            finally:
                end(status)

        return Streaming(relay(), stop=lambda: end(CLIENT_CLOSED))

    def _engine_exception(self, exc: Exception, model: str) -> GlmserveError:
        """Failures of the call itself; errors the engine reports arrive as ErrorResponse instead."""
        if isinstance(exc, BackPressureError | DeploymentUnavailableError):
            return OverloadedError(
                f"all {model} engine replicas are busy; retry shortly", retry_after_s=self._retry_after_s
            )
        cause = getattr(exc, "cause", None) or exc
        log.error("engine call for %s failed: %r", model, cause)
        return BackendError(f"the {model} engine failed ({type(cause).__name__}); the request was not completed")
