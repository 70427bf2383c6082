"""glmserve errors on the gRPC wire, both ways.

The server marks every error it raises on purpose with the trailer `glmserve-error-code`, so a
client can tell "the router answered UNAVAILABLE: no worker can serve this" from "the router is
unreachable" (which gRPC also reports as UNAVAILABLE) and fall back only in the second case.
A refusal over plan limits (RESOURCE_EXHAUSTED) carries the client's 429 headers (x-ratelimit-*,
retry-after) as trailers of the same names. On a Session stream a failed call's reply carries the
same code, details and trailers as a CallStatus message.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from glmserve.common.errors import (
    AuthenticationError,
    BackendError,
    GlmserveError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitedError,
)

ERROR_CODE = "glmserve-error-code"
RETRY_AFTER = "glmserve-retry-after-s"
_RATE_LIMIT_HEADERS = ("x-ratelimit-", "retry-after")
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
_BY_STATUS: dict[grpc.StatusCode, type[GlmserveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitedError,
    grpc.StatusCode.UNAVAILABLE: OverloadedError,
    grpc.StatusCode.INTERNAL: BackendError,
}


def to_status(error: GlmserveError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """The status code, details and trailers the server aborts with."""
    trailers = [(ERROR_CODE, error.code or error.kind.grpc_code.lower())]
    if error.retry_after_s is not None:
        trailers.append((RETRY_AFTER, f"{error.retry_after_s:g}"))
    if isinstance(error, RateLimitedError):
        trailers += error.headers.items()
    return grpc.StatusCode[error.kind.grpc_code], error.message, tuple(trailers)


def status_code(value: int) -> grpc.StatusCode:
    """The status code whose number a Session reply's CallStatus carries (UNKNOWN if none)."""
    return _STATUS_CODES.get(value, grpc.StatusCode.UNKNOWN)


def from_rpc_error(error: grpc.RpcError) -> GlmserveError | None:
    """The error the router raised on purpose, or None when the call failed for another reason
    (unreachable, deadline, cancelled, a router bug)."""
    return from_status(error.code(), error.details() or "", error.trailing_metadata() or ())


def from_status(
    status: grpc.StatusCode, details: str, trailing: Iterable[tuple[str, str | bytes]]
) -> GlmserveError | None:
    """from_rpc_error of a status given by its parts (a Session reply's CallStatus)."""
    trailers = dict(trailing)
    code = trailers.get(ERROR_CODE)
    cls = _BY_STATUS.get(status)
    if code is None or cls is None:
        return None
    retry = trailers.get(RETRY_AFTER)
    message, retry_after_s = details, float(retry) if retry else None
    if cls is RateLimitedError:
        headers = {k: str(v) for k, v in trailers.items() if k.startswith(_RATE_LIMIT_HEADERS)}
        return RateLimitedError(message, code=str(code), retry_after_s=retry_after_s, headers=headers)
    return cls(message, code=str(code), retry_after_s=retry_after_s)
