"""OpenAI's rate-limit headers, computed from a decision (on 2xx and 429 alike).

OpenAI reports requests and tokens; glmserve limits input and output tokens separately, so
`x-ratelimit-*-tokens` describe whichever token bucket binds (the one that refused the request,
else the one with the smallest share left) and `x-ratelimit-*-{input,output}-tokens` give both.
Resets use OpenAI's (Go duration) format: "20ms", "1.5s", "6m0s".
"""

from __future__ import annotations

import math

from glmserve.admission.model import US_PER_S, Bucket, Decision, Dimension


def format_duration(us: int) -> str:
    if us <= 0:
        return "0s"
    if us < US_PER_S:
        return f"{math.ceil(us / 1000)}ms"
    ms = math.ceil(us / 1000)  # round up: a client that waits this long is never early
    minutes, ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    seconds = f"{ms // 1000}.{ms % 1000:03d}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _binding_tokens(decision: Decision) -> Bucket | None:
    if decision.limited_by is Dimension.INPUT_TOKENS:
        return decision.input_tokens
    if decision.limited_by is Dimension.OUTPUT_TOKENS:
        return decision.output_tokens
    limited = [b for b in (decision.input_tokens, decision.output_tokens) if b.limit]
    return min(limited, key=lambda b: b.remaining / b.limit, default=None)


def _put(headers: dict[str, str], suffix: str, bucket: Bucket | None) -> None:
    if bucket is None or not bucket.limit:
        return  # an unlimited dimension has nothing to report
    headers[f"x-ratelimit-limit-{suffix}"] = str(bucket.limit)
    headers[f"x-ratelimit-remaining-{suffix}"] = str(max(0, bucket.remaining))
    headers[f"x-ratelimit-reset-{suffix}"] = format_duration(bucket.reset_us)


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    headers: dict[str, str] = {}
    _put(headers, "requests", decision.requests)
    _put(headers, "tokens", _binding_tokens(decision))
    _put(headers, "input-tokens", decision.input_tokens)
    _put(headers, "output-tokens", decision.output_tokens)
    return headers
