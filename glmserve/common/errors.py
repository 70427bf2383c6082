"""Error taxonomy shared by every component.

Each error says whether retrying can help (`retryable`) and how it surfaces on each
interface: an HTTP status + OpenAI error type for tenants, a gRPC status name for the
router, and requeue-or-not for the operator. Callers raise these; edges translate them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError


@dataclass(frozen=True, slots=True)
class ErrorKind:
    http_status: int
    openai_type: str  # the `error.type` OpenAI's API sends with this status (the ingress's responses)
    grpc_code: str  # a grpc.StatusCode name; common/ must not import grpc
    retryable: bool


# OpenAI's API answers a bad key (401) and an unknown model (404) as invalid requests, and any
# 5xx but an overload as a server error; clients and SDK users match on these strings.
INVALID = ErrorKind(400, "invalid_request_error", "INVALID_ARGUMENT", retryable=False)
UNAUTHENTICATED = ErrorKind(401, "invalid_request_error", "UNAUTHENTICATED", retryable=False)
FORBIDDEN = ErrorKind(403, "permission_error", "PERMISSION_DENIED", retryable=False)
NOT_FOUND = ErrorKind(404, "invalid_request_error", "NOT_FOUND", retryable=False)
RATE_LIMITED = ErrorKind(429, "rate_limit_error", "RESOURCE_EXHAUSTED", retryable=True)
INTERNAL = ErrorKind(500, "server_error", "INTERNAL", retryable=False)
UNAVAILABLE = ErrorKind(503, "service_unavailable", "UNAVAILABLE", retryable=True)
TIMEOUT = ErrorKind(504, "server_error", "DEADLINE_EXCEEDED", retryable=True)
KINDS = (INVALID, UNAUTHENTICATED, FORBIDDEN, NOT_FOUND, RATE_LIMITED, INTERNAL, UNAVAILABLE, TIMEOUT)
_BY_STATUS = {kind.http_status: kind for kind in KINDS}


def kind_of(http_status: int) -> ErrorKind:
    """The kind an HTTP status stands for; statuses no glmserve error raises (a framework's 405,
    413, 422) count as an invalid request, or an internal error when 5xx."""
    return _BY_STATUS.get(http_status) or (INTERNAL if http_status >= 500 else INVALID)


class GlmserveError(Exception):
    """Base of all errors that carry a user-facing message."""

    kind: ErrorKind = INTERNAL

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        return self.kind.retryable


class InvalidRequestError(GlmserveError):
    kind = INVALID


class AuthenticationError(GlmserveError):
    kind = UNAUTHENTICATED


class PermissionDeniedError(GlmserveError):
    kind = FORBIDDEN


class NotFoundError(GlmserveError):
    kind = NOT_FOUND


class RateLimitedError(GlmserveError):
    kind = RATE_LIMITED

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None, **details: Any) -> None:
        """`headers`: the x-ratelimit-* and retry-after headers the client's 429 carries."""
        super().__init__(message, **details)
        self.headers: dict[str, str] = dict(headers or {})


class OverloadedError(GlmserveError):
    """Capacity is exhausted right now; the same request may succeed after `retry_after_s`."""

    kind = UNAVAILABLE


class BackendError(GlmserveError):
    """A dependency (engine, router, Redis) failed in a way the caller cannot fix."""

    kind = INTERNAL


class ConfigError(GlmserveError):
    """A configuration (CLI flags, config file, CRD spec) is wrong; fixing it is the only remedy."""

    kind = INVALID


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(map(str, loc))


def validation_problems(
    exc: ValidationError, root: str = "config", where: Callable[[tuple[int | str, ...]], str] = _dotted
) -> str:
    """A pydantic error as a human reads it: `field.path: what to fix; ...` (`root`: the whole object)."""
    return "; ".join(f"{where(e['loc']) or root}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
