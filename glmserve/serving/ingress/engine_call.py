"""One admitted request through the engine pools: remote prefill when disaggregated, then the
decode (or colocated) engine, its answer shaped into a reply: an error, a body or an SSE stream."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import Any

from opentelemetry import trace
from ray.llm._internal.serve.core.protocol import RawRequestInfo
from ray.serve import context as serve_context
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

from glmserve.common import tracing
from glmserve.common.errors import BackendError, GlmserveError, OverloadedError
from glmserve.router.types import Decision
from glmserve.serving.ingress.engine_request import EngineBody, EngineChatRequest, EngineRequest
from glmserve.serving.ingress.errors import error_event
from glmserve.serving.ingress.life import CLIENT_CLOSED, RequestLife
from glmserve.serving.ingress.migration import EngineFault, Progress, fault_error
from glmserve.serving.ingress.pd import PrefillRejected, remote_prefill
from glmserve.serving.ingress.reply import Completed, Failed, Reply, Streaming
from glmserve.serving.ingress.responses import Usage, glm_message_fields, sse_stream
from glmserve.serving.ingress.running import RunningReplicas
from glmserve.serving.ingress.settings import MigrationSettings

log = logging.getLogger("glmserve.ingress")


# How long a stream whose client left may take to end once aborted (the abort waits for a free
# call slot on its replica, the stream for the engine's last batch): past it, the stream is cut
# and the request billed what was relayed.
HANG_UP_DRAIN_S = 5.0


class _Stream:
    """An engine call's stream whose pending read survives its reader's cancellation: when the
    client leaves mid-read, the read goes on, and what the engine sends after it is still counted."""

    __slots__ = ("_read", "call")

    def __init__(self, call: DeploymentResponseGenerator) -> None:
        self.call = call
        self._read: asyncio.Future[Any] | None = None

    async def next(self) -> Any:
        """The next batch; StopAsyncIteration at the end."""
        if self._read is None:
            self._read = asyncio.ensure_future(self.call.__anext__())
            self._read.add_done_callback(_retrieved)
        read = self._read
        try:
            return await asyncio.shield(read)
        finally:
            if read.done():
                self._read = None

    def cancel(self) -> None:
        self.call.cancel()
        if self._read is not None:
            self._read.cancel()
            self._read = None


def _retrieved(read: asyncio.Future[Any]) -> None:
    """Marks a read's exception as seen: a read nobody awaits any more (its stream was cancelled,
    which Serve may answer with RequestCancelledError rather than a cancelled read) would otherwise
    be logged as "Task exception was never retrieved" when collected. Whoever still awaits it
    gets the exception all the same."""
    if not read.cancelled():
        read.exception()


def _kept_when_the_client_leaves(call: Callable[[], DeploymentResponseGenerator]) -> DeploymentResponseGenerator:
    """`call()`, a handle call that Serve does not cancel when the HTTP request that made it is
    cancelled (its client left): with direct ingress Serve cancels such calls itself, and the
    engine's stream must outlive a hang-up (_hang_up reads it to its end). Every way a request
    ends cancels or ends its engine call here instead."""
    context = serve_context._get_serve_request_context()
    detached = replace(context, cancel_on_parent_request_cancel=False)
    token = serve_context._serve_request_context.set(detached)  # type: ignore[arg-type]  # Serve types it by its default, None
    try:
        return call()
    finally:
        serve_context._serve_request_context.reset(token)


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
        migration: MigrationSettings | None = None,
        *,
        tool_call_ids: frozenset[int] = frozenset(),
        running: RunningReplicas | None = None,
    ) -> None:
        """`migration`: how requests move off a failed engine; `tool_call_ids`: the tokenizer's
        `<tool_call>`, which ends that; `running`: the decode pool's running replicas, which a
        request moves to only if one it has not failed on is among them (migration.py)."""
        self._decode = decode.options(stream=True)
        self._prefill = prefill.options(stream=True) if prefill is not None else None
        self._retry_after_s = retry_after_s
        self._migration = migration or MigrationSettings()
        self._tool_call_ids = tool_call_ids
        self._running = running

    async def check_health(self) -> None:
        for pool in (self._decode, self._prefill):
            if pool is not None:
                await pool.options(stream=False).check_health.remote()

    async def run(self, request: EngineRequest, decision: Decision | None, life: RequestLife) -> Reply:
        """`decision`: the router's workers (None: Serve balances both legs). With one, the router
        also decided whether remote prefill is worth it (short uncached prompts prefill on decode)."""
        if self._running is not None and self._migration.limit > 0:
            self._running.running()  # followed from the first request on: known when one fails
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
        progress = Progress(
            replace(request, token_ids=request.stream and self._migration.limit > 0),
            self._migration,
            self._tool_call_ids,
        )
        body = progress.request.engine_body(target=target, kv_transfer_params=kv_transfer_params)
        while True:
            try:
                stream, first = await self._open(body, span)
                break
            except EngineFault as fault:
                # Nothing was delivered: the request starts over on another replica (its prefill too).
                body = self._move(progress, body, fault, life).engine_body(target=None)
        item = first[0] if isinstance(first, list) else first
        if isinstance(item, ErrorResponse):
            return Failed.engine(item.error, self._retry_after_s)
        if not request.stream:
            content = glm_message_fields(item.model_dump())
            life.timer.tokens_sent(1)
            return Completed(content, Usage.from_dict(content.get("usage")))
        life.prefill_done()
        return self._streamed(progress, body=body, stream=stream, first=first, life=life, span=span)

    async def _open(self, body: EngineBody, span: trace.Span) -> tuple[_Stream, Any]:
        """The engine's stream and its first item. Raises EngineFault when another replica may
        do better (the call failed, stalled, or the engine answered with a server error)."""
        stream = _Stream(
            _kept_when_the_client_leaves(lambda: getattr(self._decode, _endpoint(body)).remote(body, _traced(span)))
        )
        try:
            first = await self._next(stream, body)
        except StopAsyncIteration:
            raise BackendError("the engine ended the request without a response") from None
        except asyncio.CancelledError:  # the client went away before the first output: its work stops
            stream.cancel()
            raise
        item = first[0] if isinstance(first, list) else first
        if isinstance(item, ErrorResponse) and Failed.engine(item.error, 0).status in _SERVER_ERRORS:
            raise EngineFault(str(item.error.message))
        return stream, first

    async def _next(self, stream: _Stream, body: EngineBody) -> Any:
        """The stream's next batch, within the stall limit. StopAsyncIteration at its end. A
        client that goes away meanwhile leaves the read, and the stream, to the caller."""
        try:
            # A whole answer (not streamed) takes as long as its generation: no stall limit there.
            async with asyncio.timeout((self._migration.stall_timeout_s or None) if body.stream else None):
                return await stream.next()
        except StopAsyncIteration:
            raise
        except TimeoutError:
            stream.cancel()  # an engine that wakes up must not finish it twice
            raise EngineFault(f"no output for {self._migration.stall_timeout_s:g} s") from None
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise self._engine_exception(exc, body.model or "") from exc
        except Exception as exc:
            raise EngineFault(_cause(exc)) from exc

    def _move(self, progress: Progress, body: EngineBody, fault: EngineFault, life: RequestLife) -> EngineRequest:
        """The request for the next replica, or the error that ends it."""
        model = progress.request.model
        failed = body.glmserve_target  # the router's pick, or the replica Serve chose (routing.pinned)
        blocker = progress.blocker(failed, self._running.running() if self._running is not None else None)
        life.timer.migrated(moved=blocker is None)
        if blocker:
            log.error("engine for %s failed (%s); not moved: %s", model, fault.reason, blocker)
            raise fault_error(f"{fault.reason}; {blocker}", model) from fault
        log.warning(
            "engine %s failed %s (%s); moving it with %d tokens generated (move %d of %d)",
            failed or "(unknown)", progress.request.request_id, fault.reason, len(progress.generated),
            progress.moves + 1, self._migration.limit,
        )  # fmt: skip
        return progress.moved(failed)

    def _streamed(
        self,
        progress: Progress,
        *,
        body: EngineBody,
        stream: _Stream,
        first: Any,
        life: RequestLife,
        span: trace.Span,
    ) -> Streaming:
        """The engine's SSE events relayed to the client, continued on another replica when the
        engine fails; what was delivered is billed from the running usage on each chunk until the
        engine's final usage event."""
        request = progress.request
        usage = Usage(prompt_tokens=len(request.prompt))
        current = [stream]

        def end(status: int) -> None:
            hang_up = lambda: self._hang_up(current[0], body, progress, usage, life)  # noqa: E731
            _end(status, life, current[0], usage, hang_up)

        async def batches() -> AsyncIterator[list[str]]:
            nonlocal body
            batch = first
            while True:
                try:
                    yield progress.relay(batch)
                    while True:
                        try:
                            batch = await self._next(current[0], body)
                        except StopAsyncIteration:
                            return
                        yield progress.relay(batch)
                except EngineFault as fault:
                    current[0].cancel()
                    if fault.relayed:
                        yield list(fault.relayed)
                    if progress.finished:  # all its tokens were out; only the stream's tail was lost
                        yield ["data: [DONE]\n\n"]
                        return
                    body = self._move(progress, body, fault, life).engine_body(target=None)
                    try:
                        current[0], batch = await self._open(body, span)
                    except EngineFault as again:
                        batch = [_fault_event(again)]  # relayed: it raises, and moves on, in the loop
                    refusal = batch[0] if isinstance(batch, list) else batch
                    if isinstance(refusal, ErrorResponse):  # e.g. 503: the other replicas are full
                        message = refusal.error.message
                        raise BackendError(
                            f"the {request.model} engine failed; no replica took it over: {message}"
                        ) from fault

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
            except Exception as exc:  # no replica could finish it, or the call itself failed
                error = exc if isinstance(exc, GlmserveError) else self._engine_exception(exc, request.model)
                status = error.kind.http_status
                yield error_event(error)
            finally:
                end(status)

        return Streaming(relay(), stop=lambda: end(CLIENT_CLOSED))

    async def _hang_up(
        self, stream: _Stream, body: EngineBody, progress: Progress, usage: Usage, life: RequestLife
    ) -> None:
        """The client left mid-stream: the engine aborts the request, as vLLM does when its own
        client leaves, but its stream is read on to its end, whose usage counts every token the
        engine generated for the request (those not sent yet too): what the request is billed."""

        async def rest() -> AsyncIterator[list[str]]:
            while True:
                try:
                    batch = await stream.next()
                except StopAsyncIteration:
                    return
                yield progress.relay([e for e in (batch if isinstance(batch, list) else [batch]) if isinstance(e, str)])

        try:
            async with asyncio.timeout(HANG_UP_DRAIN_S):
                await self._decode.options(stream=False).abort.remote(body)
                async for _ in sse_stream(rest(), client_wants_usage=False, usage=usage, on_events=_ignore):
                    pass
        except Exception as exc:  # it is billed what was relayed
            log.warning("no usage for %s after its client left: %r", progress.request.request_id, exc)
        finally:
            stream.cancel()
            life.end(CLIENT_CLOSED, usage)

    def _engine_exception(self, exc: Exception, model: str) -> GlmserveError:
        """Failures of the call itself; errors the engine reports arrive as ErrorResponse instead."""
        if isinstance(exc, BackPressureError | DeploymentUnavailableError):
            return OverloadedError(
                f"all {model} engine replicas are busy; retry shortly", retry_after_s=self._retry_after_s
            )
        cause = getattr(exc, "cause", None) or exc
        log.error("engine call for %s failed: %r", model, cause)
        return BackendError(f"the {model} engine failed ({type(cause).__name__}); the request was not completed")


_SERVER_ERRORS = (500, 502, 504)  # 503 is overload: every replica would answer it


def _endpoint(body: EngineBody) -> str:
    return "chat" if isinstance(body, EngineChatRequest) else "completions"


def _cause(exc: Exception) -> str:
    cause = getattr(exc, "cause", None) or exc
    return type(cause).__name__


def _end(
    status: int, life: RequestLife, stream: _Stream, usage: Usage, hang_up: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Ends a streamed request, once: one whose client left (CLIENT_CLOSED) when its engine's
    stream has (`hang_up`), any other now, its stream cut."""
    if life.ended or life.ending:
        return
    if status == CLIENT_CLOSED:
        life.end_later(hang_up())
    else:
        stream.cancel()
        life.end(status, usage)


def _ignore(events: int) -> None:
    """Events of a stream whose client left: they reach no one."""


def _fault_event(fault: EngineFault) -> str:
    """A failed move's first attempt, as the engine's own server-error event would read."""
    return f"data: {json.dumps({'error': {'message': fault.reason, 'code': 500}})}\n\n"
