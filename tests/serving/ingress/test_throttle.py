from __future__ import annotations

import pytest

from glmserve.common.errors import RateLimitedError
from glmserve.serving.ingress import throttle
from glmserve.serving.ingress.throttle import FailedKeyThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_over_its_failed_keys_gets_429_until_the_oldest_failure_ages_out() -> None:
    clock = Clock()
    keys = FailedKeyThrottle(3, 60, clock)
    for _ in range(3):
        keys.check("10.0.0.1")
        keys.failed("10.0.0.1")
        clock.now += 10
    with pytest.raises(RateLimitedError) as refused:
        keys.check("10.0.0.1")
    assert refused.value.kind.http_status == 429
    assert refused.value.retry_after_s == pytest.approx(30)
    keys.check("10.0.0.2")  # another address is not affected
    clock.now += 31
    keys.check("10.0.0.1")


def test_the_addresses_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throttle, "MAX_CLIENTS", 5)
    keys = FailedKeyThrottle(1, 60, Clock())
    for i in range(20):
        keys.failed(f"10.0.0.{i}")
    keys.check("10.0.0.0")  # forgotten: the oldest went first
    with pytest.raises(RateLimitedError):
        keys.check("10.0.0.19")
