"""The router's shared-token authentication: every call but health checks carries
`authorization: Bearer <token>`, compared in constant time; anything else is UNAUTHENTICATED.

Without the token any pod that reaches the router could deregister real engines, register fake
ones (whose KV-event endpoints the router then subscribes to), or forge Route/Complete calls that
change what tenants are billed. Health checks stay open: the kubelet's gRPC probe sends no metadata,
and they tell nothing.

A refusal carries no glmserve error marker (status.py), so a caller with a wrong token treats the
router as unusable (the ingress then admits and routes on its own, and logs why) rather than
passing UNAUTHENTICATED on to its tenant as if its API key were wrong.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health

from glmserve.common.config import ROUTER_TOKEN_ENV
from glmserve.common.errors import ConfigError

METADATA_KEY = "authorization"
MIN_TOKEN_CHARS = 16
_OPEN_PREFIX = f"/{health.SERVICE_NAME}/"


def token_from_environment(env: Mapping[str, str] = os.environ) -> str | None:
    """The token in GLMSERVE_ROUTER_TOKEN; None when unset. A short one is refused: it is all that
    stands between a pod on the network and the router's control of routing and billing."""
    token = env.get(ROUTER_TOKEN_ENV)
    if token is None:
        return None
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{ROUTER_TOKEN_ENV} must hold at least {MIN_TOKEN_CHARS} characters (a random token)")
    return token


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """What a caller adds to each call's metadata (nothing without a token)."""
    return ((METADATA_KEY, f"Bearer {token}"),) if token else ()


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuses every call (health checks aside) whose metadata lacks the token, before its request
    is even decoded."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        if method.startswith(_OPEN_PREFIX) or self._authentic(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        return _refusal(await continuation(handler_call_details))

    def _authentic(self, metadata: Any) -> bool:
        sent = [value for key, value in metadata or () if key == METADATA_KEY]
        if len(sent) != 1:
            return False
        value = sent[0] if isinstance(sent[0], bytes) else str(sent[0]).encode()
        return hmac.compare_digest(value, self._expected)


async def _deny(_request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong router token ({METADATA_KEY} metadata)")


def _refusal(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    """A handler of the method's own kind that refuses (None: an unknown method stays UNIMPLEMENTED)."""
    if handler is None:
        return None
    serializers = {"request_deserializer": None, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_deny, **serializers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_deny, **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_deny, **serializers)
    return grpc.stream_stream_rpc_method_handler(_deny, **serializers)
