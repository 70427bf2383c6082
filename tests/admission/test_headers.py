from __future__ import annotations

import pytest

from glmserve.admission.headers import format_duration, rate_limit_headers
from glmserve.admission.model import Bucket, Decision, Dimension


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (0, "0s"),
        (1, "1ms"),
        (20_000, "20ms"),
        (999_999, "1000ms"),
        (1_000_000, "1s"),
        (1_500_000, "1.5s"),
        (8_640_001, "8.641s"),
        (59_999_000, "59.999s"),
        (60_000_000, "1m0s"),
        (360_000_000, "6m0s"),
        (86_400_000, "1m26.4s"),
        (3_723_000_000, "1h2m3s"),
    ],
)
def test_durations_read_like_openais(us: int, text: str) -> None:
    assert format_duration(us) == text


def decision(inp: Bucket, out: Bucket, limited_by: Dimension | None = None) -> Decision:
    return Decision(limited_by is None, limited_by, 0, Bucket(0, 0, 0), inp, out, 1, 0)


def test_tokens_follow_the_binding_bucket() -> None:
    inp, out = Bucket(1000, 100, 54_000_000), Bucket(500, 400, 12_000_000)
    assert rate_limit_headers(decision(inp, out))["x-ratelimit-limit-tokens"] == "1000"  # 10% left < 80%
    refused = rate_limit_headers(decision(inp, out, Dimension.OUTPUT_TOKENS))
    assert refused["x-ratelimit-remaining-tokens"] == "400"


def test_unlimited_dimensions_send_no_headers() -> None:
    headers = rate_limit_headers(decision(Bucket(0, 0, 0), Bucket(300, -20, 64_000_000)))
    assert headers == {
        "x-ratelimit-limit-tokens": "300",
        "x-ratelimit-remaining-tokens": "0",  # in debt after an overrun: never negative on the wire
        "x-ratelimit-reset-tokens": "1m4s",
        "x-ratelimit-limit-output-tokens": "300",
        "x-ratelimit-remaining-output-tokens": "0",
        "x-ratelimit-reset-output-tokens": "1m4s",
    }
