"""The gRPC servicer: validates requests, calls the Router, maps glmserve errors to status codes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import trace

from glmserve.common import tracing
from glmserve.common.errors import GlmserveError, InvalidRequestError
from glmserve.router import convert
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.proto import router_pb2_grpc as pb_grpc
from glmserve.router.router import Router
from glmserve.router.status import to_status
from glmserve.router.subscriber import Subscriptions

log = logging.getLogger("glmserve.router")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Resp]


def _rpc(handler: Handler[Req, Resp]) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Runs a synchronous handler on the server's loop (the Router is single-threaded) and turns
    GlmserveErrors into their status codes; anything else becomes INTERNAL without the marker."""

    @functools.wraps(handler)
    async def call(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return handler(self, request, context)
        except GlmserveError as exc:
            code, details, trailers = to_status(exc)
            await context.abort(code, details, trailing_metadata=trailers)
            raise AssertionError("abort returned") from exc  # abort always raises

    return call


class RouterService(pb_grpc.RouterServicer):
    def __init__(self, router: Router, subscriptions: Subscriptions, tracer: trace.Tracer | None = None) -> None:
        self._router = router
        self._subscriptions = subscriptions
        self._tracer = tracer or trace.NoOpTracer()

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
        return pb.RegisterResponse(heartbeat_interval_s=cfg.heartbeat_interval_s, lease_s=cfg.lease_s)

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
    def Route(self, request: pb.RouteRequest, context: grpc.aio.ServicerContext) -> pb.RouteResponse:
        try:
            query = convert.query_from_pb(request, self._router.config.max_prompt_tokens)
        except GlmserveError:
            self._router.metrics.routes.labels("", "invalid").inc()
            raise
        parent = tracing.context_from_grpc(context.invocation_metadata())
        with self._tracer.start_as_current_span("route", context=parent, kind=trace.SpanKind.SERVER) as span:
            decision = self._router.route(query)
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

    @_rpc
    def Complete(self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext) -> pb.CompleteResponse:
        request_id, stage, usage = convert.completion_from_pb(request)
        return pb.CompleteResponse(known=self._router.complete(request_id, stage, usage))


class StrictDecoding(grpc.aio.ServerInterceptor):
    """Bytes that do not decode as the method's request message are INVALID_ARGUMENT. gRPC itself
    decodes before any handler runs and answers UNKNOWN, which reads like a router fault."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
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
