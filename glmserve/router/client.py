"""The async client of one router replica: the engines (Register/Heartbeat) and, through
replicas.RouterReplicas, the ingress (Route/Complete) use it.

Every call has a deadline. A call that fails because the router is unreachable, too slow or broken
raises RouterUnavailableError: the caller routes locally instead. An answer the router gives on
purpose raises its glmserve error (OverloadedError: no worker can take the request, or flow control
shed it; RateLimitedError, with the client's 429 headers: over the tenant's plan limits;
InvalidRequestError; NotFoundError: heartbeat of an unknown worker, register again).

Route and Complete travel on one Session stream (stream.py) per client while the router has
Session (v3); against a v2 router, which answers UNIMPLEMENTED, they are unary calls, and Session is
tried again after SESSION_RETRY_S (the replica behind the address may have been upgraded).

Route speaks protocol v2 (router.proto): a router that loads tenants admits the request, and the
Decision's `admission` carries what the client's response needs; `admission` None means the router
did not admit it (a v1 router, or one without tenants) and the caller admits it itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypedDict, Unpack

import grpc
from opentelemetry.context import Context

from glmserve.common import tracing
from glmserve.common.errors import UNAVAILABLE, GlmserveError
from glmserve.common.tenancy import PriorityClass
from glmserve.router import convert
from glmserve.router.auth import call_metadata, token_from_environment
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.proto import router_pb2_grpc as pb_grpc
from glmserve.router.status import from_rpc_error, from_status, status_code
from glmserve.router.stream import Session, StreamEnded
from glmserve.router.types import Decision, Load, Outcome, Stage, Usage, WorkerInfo

# A Route waits in the router's queue for an engine slot (flow control) and is answered, routed or
# refused, within the router's flow.queue_ttl_s (30 s by default): the deadline must outlast it, or
# the ingress would abandon queued requests and admit them again on its own. An unreachable router
# still fails at once (connection refused, or a channel gRPC knows to be down).
ROUTE_TIMEOUT_MARGIN_S = 5.0
DEFAULT_ROUTE_TIMEOUT_S = 30.0 + ROUTE_TIMEOUT_MARGIN_S
DEFAULT_TIMEOUT_S = 2.0
SESSION_RETRY_S = 60.0


class RouteOptions(TypedDict, total=False):
    """Who asks, and how: every key may be left out."""

    tenant: str
    cache_salt: str  # the cache_salt the engine gets
    max_tokens: int | None  # the client's; None (or 0): it set none
    priority: PriorityClass  # default standard; a router that admits applies the tenant's plan's
    allowed_worker_ids: Sequence[str]  # empty: any worker
    trace_context: Context | None  # the caller's trace, which the router's span joins


class RouterUnavailableError(GlmserveError):
    """The router did not answer (unreachable, deadline, internal failure): route locally."""

    kind = UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Lease:
    heartbeat_interval_s: float
    lease_s: float


class RouterClient:
    def __init__(
        self,
        target: str,
        *,
        route_timeout_s: float = DEFAULT_ROUTE_TIMEOUT_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        token: str | None = None,
        session: bool = True,
    ) -> None:
        """`target`: one router replica ("router-0:50051", "10.0.0.1:50051"). For an address that
        stands for several replicas, the ingress uses replicas.RouterReplicas, which keeps each
        request's calls on the replica that routed it. `token`: the router's (auth.py); None: the
        one in GLMSERVE_ROUTER_TOKEN, if any. `session`: False makes every call unary (as a v2
        client does)."""
        self.target = target
        self._auth = call_metadata(token or token_from_environment())
        self._route_timeout_s = route_timeout_s
        self._timeout_s = timeout_s
        options = [("grpc.max_send_message_length", 64 * 2**20)]
        self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = pb_grpc.RouterStub(self._channel)
        self._session: Session | None = None
        self._unary_until = 0.0 if session else float("inf")

    def _stream(self) -> Session | None:
        """The Session to send Route and Complete on (a new one after the last ended); None while
        the router is known to have none."""
        if time.monotonic() < self._unary_until:
            return None
        if self._session is None or self._session.ended is not None:
            self._session = Session(self._stub, self._auth)
        return self._session

    def _on_stream(self, reply: pb.SessionReply, method: str) -> pb.SessionReply:
        """`reply`, or the error its status stands for (as _error does for a unary call's)."""
        if reply.WhichOneof("result") != "status":
            return reply
        status = reply.status
        code = status_code(status.code)
        trailers = [(t.key, t.value) for t in status.trailers]
        answered = from_status(code, status.details, trailers)
        if answered is not None:
            raise answered
        raise self._unavailable(method, code.name, status.details)

    def _stream_failed(self, exc: StreamEnded | TimeoutError, method: str) -> RouterUnavailableError | None:
        """What a call that the stream did not answer raises; None: the router has no Session (the
        call never reached it), make it unary."""
        if isinstance(exc, TimeoutError):
            return self._unavailable(method, "DEADLINE_EXCEEDED", "Deadline Exceeded")
        if exc.code == grpc.StatusCode.UNIMPLEMENTED:
            self._unary_until = time.monotonic() + SESSION_RETRY_S
            return None
        return self._unavailable(method, exc.code.name, exc.details)

    async def route(
        self, request_id: str, model: str, prompt_token_ids: Sequence[int], **options: Unpack[RouteOptions]
    ) -> Decision:
        request = convert.query_to_pb(
            request_id,
            model,
            prompt_token_ids,
            tenant=options.get("tenant", ""),
            cache_salt=options.get("cache_salt", ""),
            max_tokens=options.get("max_tokens"),
            priority=options.get("priority", "standard"),
            allowed_worker_ids=options.get("allowed_worker_ids", ()),
        )
        trace_context = tracing.grpc_metadata(options.get("trace_context"))
        if (stream := self._stream()) is not None:
            try:
                streamed = await stream.route(request, self._route_timeout_s, dict(trace_context))
                return convert.decision_from_pb(self._on_stream(streamed, "Route").route)
            except (StreamEnded, TimeoutError) as exc:
                if (failure := self._stream_failed(exc, "Route")) is not None:
                    raise failure from None
        try:
            reply = await self._stub.Route(
                request, timeout=self._route_timeout_s, metadata=(*self._auth, *trace_context)
            )
        except grpc.RpcError as exc:
            raise self._error(exc, "Route") from None
        return convert.decision_from_pb(reply)

    async def complete(
        self, request_id: str, usage: Usage | None = None, *, stage: Stage = "finished", outcome: Outcome = "ok"
    ) -> bool:
        """Reports the end of a request (or of its remote prefill leg) with the usage delivered,
        which settles its admission; False if the router did not know the request (it restarted,
        or the request was never routed by it)."""
        request = convert.completion_to_pb(request_id, stage, usage or Usage(), outcome)
        if (stream := self._stream()) is not None:
            try:
                return bool(self._on_stream(await stream.complete(request, self._timeout_s), "Complete").complete.known)
            except (StreamEnded, TimeoutError) as exc:
                if (failure := self._stream_failed(exc, "Complete")) is not None:
                    raise failure from None
        try:
            reply = await self._stub.Complete(request, timeout=self._timeout_s, metadata=self._auth)
        except grpc.RpcError as exc:
            raise self._error(exc, "Complete") from None
        return bool(reply.known)

    async def register(self, worker: WorkerInfo, load: Load | None = None) -> Lease:
        request = pb.RegisterRequest(
            worker=convert.worker_to_pb(worker),
            load=convert.load_to_pb(load or Load()),
            protocol_version=convert.PROTOCOL_VERSION,
        )
        try:
            reply = await self._stub.Register(request, timeout=self._timeout_s, metadata=self._auth)
        except grpc.RpcError as exc:
            raise self._error(exc, "Register") from None
        return Lease(reply.heartbeat_interval_s, reply.lease_s)

    async def heartbeat(self, worker_id: str, load: Load) -> None:
        """Raises NotFoundError when the router does not know the worker: register again."""
        try:
            await self._stub.Heartbeat(
                pb.HeartbeatRequest(worker_id=worker_id, load=convert.load_to_pb(load or Load())),
                timeout=self._timeout_s,
                metadata=self._auth,
            )
        except grpc.RpcError as exc:
            raise self._error(exc, "Heartbeat") from None

    async def deregister(self, worker_id: str) -> None:
        try:
            await self._stub.Deregister(
                pb.DeregisterRequest(worker_id=worker_id), timeout=self._timeout_s, metadata=self._auth
            )
        except grpc.RpcError as exc:
            raise self._error(exc, "Deregister") from None

    def state(self, *, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """The channel's connectivity (TRANSIENT_FAILURE: gRPC found the router down)."""
        return self._channel.get_state(try_to_connect)

    def _error(self, exc: grpc.RpcError, method: str) -> GlmserveError:
        answered = from_rpc_error(exc)
        if answered is not None:
            return answered
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return self._unavailable(method, code, details)

    def _unavailable(self, method: str, code: str, details: str) -> RouterUnavailableError:
        return RouterUnavailableError(f"router {self.target} {method} failed: {code} {details}", code=code.lower())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self._channel.close()

    async def __aenter__(self) -> RouterClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
