"""Envoy's rate-limit service (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`),
answered from glmserve's plans and limits store, so a gateway's routes draw on the same buckets as
the requests glmserve admits itself. docs/envoy-rate-limit.md is the user's side of this.

Each descriptor is one request of one tenant (entries below); the call is OVER_LIMIT when any
descriptor is. A request is admitted and settled at once: Envoy's check path never says when a
request ends, so it holds no concurrency slot after the answer (but is refused while the tenant's
glmserve requests fill its plan's concurrency) and is charged the tokens its entries name, no more.

    tenant | api_key   who (exactly one): a tenant id, or an API key / `Bearer` Authorization value
    model              optional: refused unless the plan includes it
    prompt_tokens      optional: input tokens to charge (default 0)
    max_tokens         optional: output tokens to charge in full (default 0: the RLS never sees the
                       real output, so it charges what the request may produce)

hits_addend (the request's or a descriptor's) counts requests, one per admission, so it must be 1
(the request's 0, unset, means 1, as Envoy's API defines it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2 as rls
from envoy.service.ratelimit.v3 import rls_pb2_grpc as rls_grpc
from google.protobuf.duration_pb2 import Duration

from glmserve.admission.limiter import Limiter
from glmserve.admission.model import US_PER_MINUTE, US_PER_S, Bucket, Dimension
from glmserve.admission.outcome import Admission
from glmserve.admission.tenants import ResolvedTenant
from glmserve.common.errors import AuthenticationError, GlmserveError, InvalidRequestError, PermissionDeniedError
from glmserve.router.status import to_status

log = logging.getLogger("glmserve.router")
SERVICE_NAME = rls.DESCRIPTOR.services_by_name["RateLimitService"].full_name
WHO = ("tenant", "api_key")
SIZES = ("prompt_tokens", "max_tokens")
KEYS = (*WHO, "model", *SIZES)
_OK, _OVER = rls.RateLimitResponse.OK, rls.RateLimitResponse.OVER_LIMIT
_Limit = rls.RateLimitResponse.RateLimit
_LIMIT_NAMES = {
    Dimension.REQUESTS: "requests_per_minute",
    Dimension.INPUT_TOKENS: "input_tokens_per_minute",
    Dimension.OUTPUT_TOKENS: "output_tokens_per_minute",
}


class Tenants(Protocol):
    """The tenants the router admits (a TenantRegistry, or one re-read when its file changes)."""

    def get(self, tenant_id: str) -> ResolvedTenant | None: ...

    def authenticate(self, authorization: str | None) -> ResolvedTenant: ...


@dataclass(frozen=True, slots=True)
class Hit:
    """One descriptor, validated: one request of one tenant."""

    tenant: str | None
    api_key: str | None
    model: str | None
    prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True, slots=True)
class Answer:
    """One descriptor's outcome: an admission (allowed or not), or a refusal before any counting."""

    admission: Admission | None
    refusal: GlmserveError | None = None

    @property
    def allowed(self) -> bool:
        return self.admission is not None and self.admission.allowed


def parse(request: rls.RateLimitRequest, domain: str) -> list[Hit]:
    """The request's descriptors as hits; InvalidRequestError naming what to fix in Envoy's config."""
    if request.domain != domain:
        raise InvalidRequestError(
            f"domain {request.domain!r} is not served here: this router answers domain {domain!r} "
            "(envoy_rate_limit.domain in its config; `domain` of Envoy's rate-limit filter)",
            param="domain",
        )
    if not request.descriptors:
        raise InvalidRequestError("no descriptors: send at least one with a `tenant` or `api_key` entry")
    if request.hits_addend > 1:
        raise _hits_error(request.hits_addend)
    return [_hit(n, descriptor) for n, descriptor in enumerate(request.descriptors)]


def _hit(n: int, descriptor: ratelimit_pb2.RateLimitDescriptor) -> Hit:
    entries: dict[str, str] = {}
    for entry in descriptor.entries:
        where = f"descriptor {n} entry {entry.key!r}"
        if entry.key not in KEYS:
            raise InvalidRequestError(f"{where} is not one glmserve knows; use {', '.join(KEYS)}", param="descriptors")
        if entry.key in entries:
            raise InvalidRequestError(f"{where} appears twice", param="descriptors")
        if not entry.value:
            raise InvalidRequestError(f"{where} has an empty value", param="descriptors")
        entries[entry.key] = entry.value
    if sum(key in entries for key in WHO) != 1:
        raise InvalidRequestError(
            f"descriptor {n} must name exactly one of `tenant` (a tenant id) or `api_key`", param="descriptors"
        )
    if descriptor.HasField("hits_addend") and descriptor.hits_addend.value != 1:
        raise _hits_error(descriptor.hits_addend.value)
    sizes = {}
    for key in SIZES:
        value = entries.get(key, "0")
        # below 2**53: the Redis store computes in Lua's doubles
        if not value.isascii() or not value.isdigit() or len(value) > 15:
            raise InvalidRequestError(
                f"descriptor {n} entry {key!r} must be a whole number of tokens below 10^15, got {value!r}",
                param="descriptors",
            )
        sizes[key] = int(value)
    return Hit(entries.get("tenant"), entries.get("api_key"), entries.get("model"), **sizes)


def _hits_error(hits: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"hits_addend is {hits}: each hit is one request admitted against its plan, so it must be 1; "
        "send token counts as the descriptor entries prompt_tokens and max_tokens",
        param="hits_addend",
    )


class EnvoyRateLimitService(rls_grpc.RateLimitServiceServicer):
    def __init__(self, tenants: Tenants, limiter: Limiter, *, domain: str) -> None:
        self._tenants = tenants
        self._limiter = limiter
        self._domain = domain

    async def ShouldRateLimit(
        self, request: rls.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls.RateLimitResponse:
        try:
            hits = parse(request, self._domain)
            # together: a Redis store decides them in one round trip
            return respond(list(await asyncio.gather(*(self._decide(hit) for hit in hits))))
        except GlmserveError as exc:  # malformed request, or the limits store down while fail-closed
            code, details, trailers = to_status(exc)
            await context.abort(code, details, trailing_metadata=trailers)
            raise AssertionError("abort returned") from exc  # abort always raises

    async def _decide(self, hit: Hit) -> Answer:
        try:
            tenant = self._tenant(hit)
            if hit.model is None:  # the gateway does not say: the plan's model list cannot apply
                tenant = replace(tenant, allowed_models=frozenset())
            admission = await self._limiter.admit(
                tenant,
                model=hit.model or "",
                prompt_tokens=hit.prompt_tokens,
                max_tokens=hit.max_tokens or 1,  # 1, refunded below: refused only when the bucket is empty
            )
        except (AuthenticationError, PermissionDeniedError, InvalidRequestError) as exc:
            return Answer(None, exc)
        if not admission.allowed:
            return Answer(admission)
        self._limiter.settle(admission, output_tokens=hit.max_tokens)
        return Answer(admission if hit.max_tokens else _without_probe(admission))

    def _tenant(self, hit: Hit) -> ResolvedTenant:
        if hit.api_key is not None:
            key = hit.api_key
            return self._tenants.authenticate(key if key[:7].lower() == "bearer " else f"Bearer {key}")
        assert hit.tenant is not None
        tenant = self._tenants.get(hit.tenant)
        if tenant is None:
            raise AuthenticationError(f"Unknown tenant {hit.tenant!r}: it has no plan here.", code="unknown_tenant")
        return tenant


def _without_probe(admission: Admission) -> Admission:
    """The admission as its headers must report it: the probe's output token was given back."""
    bucket = admission.decision.output_tokens
    if not bucket.limit:
        return admission
    refunded = Bucket(bucket.limit, bucket.remaining + 1, max(0, bucket.reset_us - US_PER_MINUTE // bucket.limit))
    return replace(admission, decision=replace(admission.decision, output_tokens=refunded))


def respond(answers: list[Answer]) -> rls.RateLimitResponse:
    """OVER_LIMIT when any descriptor is. The headers (x-ratelimit-*, and retry-after on a refusal)
    and the body are the first refused descriptor's, else the first's: the client's response
    carries them as it would from glmserve's own API."""
    refused = next((a for a in answers if not a.allowed), None)
    shown = refused or answers[0]
    response = rls.RateLimitResponse(
        overall_code=_OVER if refused else _OK, statuses=[_status(answer) for answer in answers]
    )
    if shown.admission is not None:
        response.response_headers_to_add.extend(_headers(shown.admission.headers()))
    error = shown.refusal or (shown.admission.error() if refused and shown.admission is not None else None)
    if error is not None:
        body = {"message": error.message, "type": error.kind.openai_type, "param": error.param, "code": error.code}
        response.raw_body = json.dumps({"error": body}).encode()
        response.response_headers_to_add.append(base_pb2.HeaderValue(key="content-type", value="application/json"))
    return response


def _headers(headers: Mapping[str, str]) -> list[base_pb2.HeaderValue]:
    return [base_pb2.HeaderValue(key=key, value=value) for key, value in headers.items()]


def _status(answer: Answer) -> rls.RateLimitResponse.DescriptorStatus:
    status = rls.RateLimitResponse.DescriptorStatus(code=_OK if answer.allowed else _OVER)
    admission = answer.admission
    if admission is None:
        return status  # refused before anything was counted: no limit applies to it
    decision = admission.decision
    if decision.limited_by is Dimension.CONCURRENCY:
        status.current_limit.CopyFrom(
            _Limit(name="max_concurrent_requests", requests_per_unit=admission.rates.max_concurrent_requests)
        )
        status.duration_until_reset.CopyFrom(_duration(round((admission.retry_after_s or 0) * US_PER_S)))
        return status
    buckets = {
        Dimension.REQUESTS: decision.requests,
        Dimension.INPUT_TOKENS: decision.input_tokens,
        Dimension.OUTPUT_TOKENS: decision.output_tokens,
    }
    binding = decision.limited_by or _tightest(buckets)
    if binding is None:
        return status  # the plan limits no rate
    bucket = buckets[binding]
    status.current_limit.CopyFrom(
        _Limit(name=_LIMIT_NAMES[binding], requests_per_unit=bucket.limit, unit=_Limit.Unit.MINUTE)
    )
    status.limit_remaining = max(0, bucket.remaining)
    status.duration_until_reset.CopyFrom(_duration(decision.retry_after_us or bucket.reset_us))
    return status


def _tightest(buckets: Mapping[Dimension, Bucket]) -> Dimension | None:
    limited = [(bucket.remaining / bucket.limit, d) for d, bucket in buckets.items() if bucket.limit]
    return min(limited)[1] if limited else None


def _duration(us: int) -> Duration:
    seconds = us // US_PER_S
    return Duration(seconds=seconds, nanos=math.floor((us - seconds * US_PER_S) * 1000))
