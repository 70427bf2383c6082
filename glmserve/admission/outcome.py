"""An admission: the decision on one request plus what its settlement needs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from glmserve.admission.headers import format_duration, rate_limit_headers
from glmserve.admission.model import US_PER_S, Cost, Decision, Dimension, Rates
from glmserve.common.errors import RateLimitedError

# store: the shared store decided; local: this replica alone (fail-open during a store outage);
# none: the tenant has no shared limits, nothing was recorded
Source = Literal["store", "local", "none"]

_PER_MINUTE = {
    Dimension.REQUESTS: "requests per minute",
    Dimension.INPUT_TOKENS: "input tokens per minute",
    Dimension.OUTPUT_TOKENS: "output tokens per minute",
}


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Admission:
    tenant_id: str
    plan: str
    lease_id: str
    cost: Cost  # taken at admission; output tokens are a reservation until settled
    rates: Rates  # the limits this decision applied (scaled down when decided locally)
    decision: Decision
    engine_max_tokens: int | None  # max_tokens to send to the engine (None: leave the request's)
    source: Source
    admitted_at: float  # time.monotonic()
    concurrency_retry_after_s: float = 1.0

    @property
    def allowed(self) -> bool:
        return self.decision.allowed

    @property
    def approximate(self) -> bool:
        """Decided on local limits during a store outage."""
        return self.source == "local"

    @property
    def retry_after_s(self) -> float | None:
        if self.allowed:
            return None
        if self.decision.limited_by is Dimension.CONCURRENCY:
            return self.concurrency_retry_after_s
        return self.decision.retry_after_us / US_PER_S

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers; on a refusal also retry-after (whole seconds, rounded up)
        and retry-after-ms, which OpenAI's SDKs prefer."""
        headers = rate_limit_headers(self.decision)
        retry = self.retry_after_s
        if retry is not None:
            headers["retry-after"] = str(max(1, math.ceil(retry)))
            headers["retry-after-ms"] = str(max(1, math.ceil(retry * 1000)))
        return headers

    def error(self) -> RateLimitedError:
        """The 429 for a refused admission, carrying `headers()`."""
        assert not self.allowed, "error() of an allowed admission"
        retry = self.retry_after_s or 0.0
        limited = self.decision.limited_by
        if limited is Dimension.CONCURRENCY:
            message = (
                f"Too many concurrent requests for plan '{self.plan}': at most {self.rates.max_concurrent_requests} "
                "may run at once. Please retry when one of your requests has finished."
            )
        else:
            assert limited is not None
            bucket = {
                Dimension.REQUESTS: self.decision.requests,
                Dimension.INPUT_TOKENS: self.decision.input_tokens,
                Dimension.OUTPUT_TOKENS: self.decision.output_tokens,
            }[limited]
            requested = {
                Dimension.REQUESTS: 1,
                Dimension.INPUT_TOKENS: self.cost.input_tokens,
                Dimension.OUTPUT_TOKENS: self.cost.output_tokens,
            }[limited]
            message = (
                f"Rate limit reached for {_PER_MINUTE[limited]} on plan '{self.plan}': limit {bucket.limit}, "
                f"remaining {max(0, bucket.remaining)}, requested {requested}. "
                f"Please try again in {format_duration(self.decision.retry_after_us)}."
            )
        return RateLimitedError(message, code="rate_limit_exceeded", retry_after_s=retry, headers=self.headers())
