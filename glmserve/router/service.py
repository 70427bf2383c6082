"""The gRPC servicer: validates requests, admits and routes them, maps glmserve errors to status
codes.

Route = the tenant's plan admits it (admitter.py; v2 requests, when the router loads tenants) ->
it waits for a slot of this replica's share of the engines (flow/, by plan priority and fairly
between tenants) -> the Router picks its workers on the KV and load state of that moment. Whatever
fails or is cancelled after the admission undoes what was done before it, so an admission is
settled exactly once: by Complete, or by its Route.

Session (session.py) carries the same Route and Complete calls as messages on one stream.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import trace

from glmserve.common import tracing
from glmserve.common.errors import GlmserveError, InvalidRequestError
from glmserve.common.tenancy import PRIORITY_RANK
from glmserve.router import convert, session
from glmserve.router.admitter import Admitter
from glmserve.router.flow import Ticket
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.proto import router_pb2_grpc as pb_grpc
from glmserve.router.router import Router
from glmserve.router.status import to_status
from glmserve.router.subscriber import Subscriptions
from glmserve.router.types import Admitted, RouteQuery

log = logging.getLogger("glmserve.router")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Resp | Awaitable[Resp]]


def _rpc(handler: Handler[Req, Resp]) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Runs a handler on the server's loop (the Router is single-threaded) and turns GlmserveErrors
    into their status codes; anything else becomes INTERNAL without the marker."""

    @functools.wraps(handler)
    async def call(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            reply = handler(self, request, context)
            return await reply if inspect.isawaitable(reply) else reply
        except GlmserveError as exc:
            code, details, trailers = to_status(exc)
            await context.abort(code, details, trailing_metadata=trailers)
            raise AssertionError("abort returned") from exc  # abort always raises

    return call


class RouterService(pb_grpc.RouterServicer):
    def __init__(
        self,
        router: Router,
        subscriptions: Subscriptions,
        tracer: trace.Tracer | None = None,
        *,
        admitter: Admitter | None = None,
    ) -> None:
        self._router = router
        self._subscriptions = subscriptions
        self._tracer = tracer or trace.NoOpTracer()
        self._admitter = admitter
        self._flow = router.flow

    @_rpc
    def Register(self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext) -> pb.RegisterResponse:
        info = convert.worker_from_pb(request.worker)
        if self._router.register(info, convert.load_from_pb(request.load)):
            log.info(
                "worker %s registered: %s %s, events %s",
                info.worker_id,
                info.role,
                info.model,
                info.kv_events_endpoint or "none",
            )
            self._subscriptions.follow(info)
        cfg = self._router.config.workers
        return pb.RegisterResponse(
            heartbeat_interval_s=cfg.heartbeat_interval_s,
            lease_s=cfg.lease_s,
            protocol_version=convert.PROTOCOL_VERSION,
        )

    @_rpc
    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        self._router.heartbeat(request.worker_id, convert.load_from_pb(request.load))
        return pb.HeartbeatResponse(lease_s=self._router.config.workers.lease_s)

    @_rpc
    def Deregister(self, request: pb.DeregisterRequest, context: grpc.aio.ServicerContext) -> pb.DeregisterResponse:
        self._subscriptions.stop(request.worker_id)
        if self._router.deregister(request.worker_id):
            log.info("worker %s deregistered", request.worker_id)
        return pb.DeregisterResponse()

    @_rpc
    async def Route(self, request: pb.RouteRequest, context: grpc.aio.ServicerContext) -> pb.RouteResponse:
        return await self.route(request, context.invocation_metadata())

    @_rpc
    def Complete(self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext) -> pb.CompleteResponse:
        return self.complete(request)

    async def Session(
        self, request_iterator: AsyncIterator[pb.SessionMessage], context: grpc.aio.ServicerContext
    ) -> None:
        await session.serve(self, context)

    async def route(
        self, request: pb.RouteRequest, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> pb.RouteResponse:
        """Route's work, raising GlmserveErrors; `metadata` carries the caller's trace context."""
        try:
            query = convert.query_from_pb(request, self._router.config.max_prompt_tokens)
        except GlmserveError:
            self._router.metrics.routes.labels("", "invalid").inc()
            raise
        parent = tracing.context_from_grpc(metadata)
        with self._tracer.start_as_current_span("route", context=parent, kind=trace.SpanKind.SERVER) as span:
            admitted, plan = None, ""
            if self._admitter is not None and request.protocol_version >= convert.ADMITTING_VERSION:
                tenant, admitted = await self._admitter.admit(query)
                query, plan = replace(query, priority=tenant.priority), tenant.plan
            has_slot = False
            try:
                await self._flow.acquire(self._ticket(query, plan, admitted))
                has_slot = True
                decision = self._router.route(query)
            except BaseException:  # refused, failed or cancelled (the ingress gave up): undo it all
                self._undo(query.request_id, has_slot=has_slot)
                raise
            # A unary reply the ingress never reads (its deadline passed as it was sent) is settled by
            # the sweep after request_ttl_s: gRPC does not tell the handler (cancelled() stays False).
            # On a Session the client reads every reply and completes such a Route itself.
            if admitted is not None:
                decision = replace(decision, admission=admitted)
            span.set_attributes(
                {
                    tracing.MODEL: query.model,
                    tracing.DECODE_WORKER: decision.decode.worker_id,
                    tracing.EXPECTED_CACHED_TOKENS: decision.expected_cached_tokens,
                    tracing.ROUTE_POLICY: decision.policy,
                }
            )
            if decision.prefill is not None:
                span.set_attribute(tracing.PREFILL_WORKER, decision.prefill.worker_id)
        return convert.decision_to_pb(decision)

    def complete(self, request: pb.CompleteRequest) -> pb.CompleteResponse:
        """Complete's work, raising GlmserveErrors."""
        request_id, stage, usage, _ = convert.completion_from_pb(request)
        known = self._router.complete(request_id, stage, usage)
        if stage == "finished":
            self._flow.release(request_id)
            if self._admitter is not None:
                known = self._admitter.settle(request_id, usage) or known
        return pb.CompleteResponse(known=known)

    def _ticket(self, query: RouteQuery, plan: str, admitted: Admitted | None) -> Ticket:
        """What flow control needs: the plan's band and weight (the priority sent, the default
        weight for a request not admitted here), and the tokens it may take."""
        max_tokens = query.max_tokens or (admitted.engine_max_tokens if admitted else None) or 0
        return Ticket(
            request_id=query.request_id,
            model=query.model,
            tenant=query.tenant,
            band=PRIORITY_RANK[query.priority],
            weight=self._flow.config.weight(plan),
            cost=len(query.tokens) + max_tokens,
        )

    def _undo(self, request_id: str, *, has_slot: bool) -> None:
        """A Route that failed or was cancelled: its flow-control slot and its admission go back."""
        if has_slot:
            self._flow.release(request_id)
        if self._admitter is not None:
            self._admitter.abandon(request_id)


class StrictDecoding(grpc.aio.ServerInterceptor):
    """Bytes that do not decode as the method's request message are INVALID_ARGUMENT. gRPC itself
    decodes before any handler runs and answers UNKNOWN, which reads like a router fault. Each
    method's wrapped handler is built once: gRPC asks the interceptors for a handler on every call."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, _strict(handler))
        return known[1]


def _strict(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    decode, behavior = handler.request_deserializer, handler.unary_unary

    async def decode_then_call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = decode(raw)
        except DecodeError as exc:
            code, details, trailers = to_status(InvalidRequestError(f"undecodable request: {exc}"))
            await context.abort(code, details, trailing_metadata=trailers)
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(
        decode_then_call, request_deserializer=None, response_serializer=handler.response_serializer
    )
