"""One request through the engine pools: remote prefill when disaggregated, then the decode
(or colocated) engine, its answer shaped into JSON, an SSE stream or an error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from ray.llm._internal.serve.core.protocol import RawRequestInfo
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from vllm.entrypoints.generate.base.protocol import StreamOptions
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

from glmserve.common import tracing
from glmserve.common.errors import BackendError, GlmserveError, OverloadedError
from glmserve.common.tenancy import PriorityClass
from glmserve.router.client import RouterUnavailableError
from glmserve.router.replicas import RouterReplicas, RouterShards
from glmserve.router.types import Decision, Stage
from glmserve.router.types import Usage as RouterUsage
from glmserve.serving.ingress.errors import error_event
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
    # Ends a stream whose body never ran (its client left first); does nothing once it ran.
    abandon: Callable[[Done], None] = lambda _: None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sends the request, as the router weighs it."""

    tenant: str
    cache_salt: str
    priority: PriorityClass


def _traced(span: trace.Span) -> RawRequestInfo | None:
    """The engine call's request headers: vLLM parents its request span on their `traceparent`."""
    headers = tracing.headers(trace.set_span_in_context(span))
    return RawRequestInfo(headers=headers) if headers else None


class EngineCall:
    def __init__(
        self,
        decode: DeploymentHandle,
        prefill: DeploymentHandle | None,
        retry_after_s: float,
        router: RouterReplicas | RouterShards | None = None,
        on_router_fallback: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._decode = decode.options(stream=True)
        self._prefill = prefill.options(stream=True) if prefill is not None else None
        self._retry_after_s = retry_after_s
        self._router = router
        self._on_router_fallback = on_router_fallback
        self._background: set[asyncio.Task[Any]] = set()

    async def _route(
        self, request_id: str, body: Any, prompt: list[int], caller: Caller, timer: RequestTimer
    ) -> Decision | None:
        """The router's choice of replicas, or None to let Serve balance (no router, or it is down)."""
        if self._router is None:
            return None
        span = timer.begin("route")
        try:
            decision = await self._router.route(
                request_id,
                body.model,
                prompt,
                tenant=caller.tenant,
                cache_salt=caller.cache_salt,
                max_tokens=body.max_tokens or 0,
                priority=caller.priority,
                trace_context=trace.set_span_in_context(span),
            )
        except RouterUnavailableError as exc:
            # Routing quality degrades, the request does not fail.
            log.warning("router unavailable (%s); Serve balances this request", exc.message)
            self._on_router_fallback("unavailable")
            return None
        prefill = decision.prefill.worker_id if decision.prefill else None
        timer.routed(prefill, decision.decode.worker_id, decision.expected_cached_tokens, decision.policy)
        return decision

    def _report(self, request_id: str, usage: Usage | None, stage: Stage) -> None:
        if self._router is None:
            return
        router = self._router

        async def report() -> None:
            with contextlib.suppress(GlmserveError):
                await router.complete(request_id, RouterUsage(usage.prompt_tokens, usage.cached_tokens,
                                      usage.completion_tokens, False) if usage else None, stage=stage)  # fmt: skip

        task = asyncio.create_task(report())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def check_health(self) -> None:
        for pool in (self._decode, self._prefill):
            if pool is not None:
                await pool.options(stream=False).check_health.remote()

    async def run(
        self, endpoint: str, body: Any, prompt: list[int], caller: Caller, timer: RequestTimer
    ) -> EngineReply:
        request_id = uuid.uuid4().hex
        decision = await self._route(request_id, body, prompt, caller, timer)
        try:
            return await self._run(
                endpoint, body=body, prompt=prompt, timer=timer, request_id=request_id, decision=decision
            )
        except BaseException:
            self._report(request_id, None, "finished")
            raise

    async def _run(
        self,
        endpoint: str,
        *,
        body: Any,
        prompt: list[int],
        timer: RequestTimer,
        request_id: str,
        decision: Decision | None,
    ) -> EngineReply:
        # Without a router decision Serve balances both legs; with one, the router also decides
        # whether remote prefill is worth it (short uncached prompts prefill on decode).
        remote_prefill_ok = decision is None or decision.prefill is not None
        wants_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
        wants_running = wants_usage and bool(body.stream_options.continuous_usage_stats)
        if body.stream:
            # The platform needs token counts for every request, also one cut short (the running
            # usage on each chunk); the client sees usage only if it asked.
            body.stream_options = StreamOptions(include_usage=True, continuous_usage_stats=True)
        # The engine reuses the ingress's tokens instead of templating and tokenizing again.
        transfer: dict[str, Any] = {"prompt_token_ids": prompt}
        if self._prefill is not None and remote_prefill_ok:
            target = decision.prefill.worker_id if decision and decision.prefill else None
            prefill_span = timer.begin("prefill")
            try:
                prefilled = await remote_prefill(
                    self._prefill, endpoint, body, prompt, target=target, raw_request=_traced(prefill_span)
                )
            except PrefillRejected as rejected:
                return EngineReply(error=EngineError.of(rejected.error, self._retry_after_s))
            timer.prefilled(prefilled.fallback, prefilled.worker)
            transfer |= prefilled.kv_transfer_params or {}
        engine_span = timer.begin("generate" if self._prefill is None else "decode")
        body.kv_transfer_params = transfer
        body.glmserve_target = decision.decode.worker_id if decision else None
        stream: DeploymentResponseGenerator = getattr(self._decode, endpoint).remote(body, _traced(engine_span))
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            raise BackendError("the engine ended the request without a response") from None
        except Exception as exc:
            raise self._engine_exception(exc, body.model or "") from exc
        item = first[0] if isinstance(first, list) else first
        if isinstance(item, ErrorResponse):
            self._report(request_id, None, "finished")
            return EngineReply(error=EngineError.of(item.error, self._retry_after_s))
        if not body.stream:
            content = glm_message_fields(item.model_dump())
            timer.tokens_sent(1)
            usage = Usage.from_dict(content.get("usage"))
            self._report(request_id, usage, "finished")
            return EngineReply(body=content, usage=usage)
        self._report(request_id, None, "prefill_done")
        return self._streamed(request_id, stream, first, (wants_usage, wants_running), timer, model=body.model or "")

    def _streamed(
        self,
        request_id: str,
        stream: DeploymentResponseGenerator,
        first: Any,
        wants_usage: tuple[bool, bool],  # final usage, running usage on each chunk
        timer: RequestTimer,
        *,
        model: str,
    ) -> EngineReply:
        """The engine's SSE events relayed to the client; ended once, by the relay or by `abandon`."""
        usage = Usage()
        ended = False

        def end(done: Done, status: int) -> None:
            nonlocal ended
            if not ended:
                ended = True
                stream.cancel()
                self._report(request_id, usage, "finished")
                done(status, usage)

        async def relay(done: Done) -> AsyncIterator[bytes]:
            async def batches() -> AsyncIterator[list[str]]:
                yield first
                async for batch in stream:
                    yield batch

            status = 499  # nginx's "client closed request", if the client goes away first
            try:
                async for chunk in sse_stream(
                    batches(),
                    client_wants_usage=wants_usage[0],
                    client_wants_running_usage=wants_usage[1],
                    usage=usage,
                    on_events=timer.tokens_sent,
                ):
                    if chunk.endswith(b"data: [DONE]\n\n"):
                        status = 200  # all was sent; a client closing now has not cut the answer short
                    yield chunk
                status = 200
            except Exception as exc:  # the engine's replica died or failed mid-stream
                error = self._engine_exception(exc, model)
                status = error.kind.http_status
                yield error_event(error)
            finally:
                end(done, status)

        return EngineReply(stream=relay, abandon=lambda done: end(done, 499))

    def _engine_exception(self, exc: Exception, model: str) -> GlmserveError:
        """Failures of the call itself; errors the engine reports arrive as ErrorResponse instead."""
        if isinstance(exc, BackPressureError | DeploymentUnavailableError):
            return OverloadedError(
                f"all {model} engine replicas are busy; retry shortly", retry_after_s=self._retry_after_s
            )
        cause = getattr(exc, "cause", None) or exc
        log.error("engine call for %s failed: %r", model, cause)
        return BackendError(f"the {model} engine failed ({type(cause).__name__}); the request was not completed")
