"""Values that cross the limits API: what a plan grants, what a request costs, what was decided.

Rates are per minute and a bucket holds one minute's worth, so "RPM = N" lets a tenant burst N
requests and then continue at N per minute. All times are integer microseconds, the unit both
backends compute in, so the Redis and in-memory backends can be compared decision for decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from glmserve.common.tenancy import PlanLimits

US_PER_S = 1_000_000
US_PER_MINUTE = 60 * US_PER_S


class Dimension(StrEnum):
    """What limited a request; the order is the order in which backends report them."""

    REQUESTS = "requests"
    INPUT_TOKENS = "input_tokens"
    OUTPUT_TOKENS = "output_tokens"
    CONCURRENCY = "concurrency"


# Backends encode the limiting dimension as a small integer (Lua returns integers only).
DIMENSION_CODES: dict[int, Dimension | None] = {0: None} | {i + 1: d for i, d in enumerate(Dimension)}


@dataclass(frozen=True, slots=True)
class Rates:
    """The shared-state limits of one tenant; 0 means unlimited."""

    requests_per_minute: int = 0
    input_tokens_per_minute: int = 0
    output_tokens_per_minute: int = 0
    max_concurrent_requests: int = 0

    @property
    def unlimited(self) -> bool:
        return not (
            self.requests_per_minute
            or self.input_tokens_per_minute
            or self.output_tokens_per_minute
            or self.max_concurrent_requests
        )

    def scaled(self, share: float) -> Rates:
        """This fraction of every limit (at least 1 where limited): one replica's part during an outage."""

        def part(limit: int) -> int:
            return max(1, int(limit * share)) if limit else 0

        return Rates(
            part(self.requests_per_minute),
            part(self.input_tokens_per_minute),
            part(self.output_tokens_per_minute),
            part(self.max_concurrent_requests),
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """A tenant's effective plan limits (plan plus overrides), checked on every request."""

    rates: Rates
    max_context_tokens: int = 0  # 0: the model's
    max_output_tokens: int = 0  # 0: the model's
    default_output_tokens: int = 1024

    @classmethod
    def from_plan(cls, limits: PlanLimits) -> Limits:
        return cls(
            Rates(
                limits.requests_per_minute,
                limits.input_tokens_per_minute,
                limits.output_tokens_per_minute,
                limits.max_concurrent_requests,
            ),
            limits.max_context_tokens,
            limits.max_output_tokens,
            limits.default_output_tokens,
        )


UNLIMITED = Limits(Rates())


@dataclass(frozen=True, slots=True)
class Cost:
    """Tokens one request takes from its tenant's buckets (output: reserved until settled)."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Bucket:
    """One dimension's state right after a decision, as the rate-limit headers report it."""

    limit: int  # per minute; 0: unlimited (remaining and reset are then 0)
    remaining: int  # whole units left; negative while a settled overrun is being paid back
    reset_us: int  # until the bucket is full again


@dataclass(frozen=True, slots=True)
class Decision:
    """A backend's answer to one admission; nothing was taken unless `allowed`."""

    allowed: bool
    limited_by: Dimension | None
    retry_after_us: int  # 0 when allowed
    requests: Bucket
    input_tokens: Bucket
    output_tokens: Bucket
    in_flight: int  # this tenant's leases, this one included when allowed
    now_us: int  # the backend's clock (Redis: the server's) at the decision
