"""Outage policies, tested by stopping and restarting a real redis-server."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from glmserve.admission.limiter import Limiter, LimiterConfig, OutagePolicy
from glmserve.admission.metrics import AdmissionMetrics
from glmserve.admission.redis_backend import RedisBackend
from glmserve.common.errors import OverloadedError
from tests.admission.helpers import tenant
from tests.admission.redis_server import RedisServer

pytestmark = pytest.mark.asyncio

RETRY_S = 0.2


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """Its own server (persisting every write), so stopping it disturbs no other test."""
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    yield server
    server.stop()


def limiter_for(server: RedisServer, outage: OutagePolicy, share: float = 1.0) -> Limiter:
    config = LimiterConfig(outage=outage, fail_open_share=share, store_retry_s=RETRY_S)
    return Limiter(
        RedisBackend.from_url(server.url, timeout_s=0.5), config, metrics=AdmissionMetrics(CollectorRegistry())
    )


def sample(limiter: Limiter, name: str, **labels: str) -> float:
    return limiter.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_fail_closed_refuses_with_503_then_recovers(server: RedisServer) -> None:
    limiter = limiter_for(server, OutagePolicy.FAIL_CLOSED)
    acme = tenant(rpm=10)  # refills one request per 6 s: none during this test
    assert (await limiter.admit(acme, model="m", prompt_tokens=1)).source == "store"
    server.stop()
    started = time.monotonic()
    for _ in range(3):
        with pytest.raises(OverloadedError) as info:
            await limiter.admit(acme, model="m", prompt_tokens=1)
        assert (info.value.kind.http_status, info.value.retry_after_s) == (503, RETRY_S)
    assert time.monotonic() - started < 1.0  # refusals are fast, not one timeout each
    assert not limiter.store_available
    assert sample(limiter, "glmserve_admission_store_up") == 0
    assert (
        sample(limiter, "glmserve_admission_decisions_total", plan="pro", outcome="unavailable", dimension="none") == 3
    )
    server.start()
    await asyncio.sleep(RETRY_S)
    admission = await limiter.admit(acme, model="m", prompt_tokens=1)
    assert admission.allowed
    assert admission.source == "store"
    assert admission.decision.requests.remaining == 8  # the state survived the restart
    assert sample(limiter, "glmserve_admission_store_up") == 1
    await limiter.aclose()


async def test_fail_open_uses_local_share_then_returns_to_redis(server: RedisServer) -> None:
    limiter = limiter_for(server, OutagePolicy.FAIL_OPEN, share=0.5)
    acme = tenant(rpm=10)
    assert (await limiter.admit(acme, model="m", prompt_tokens=1)).source == "store"
    server.stop()
    local = [await limiter.admit(acme, model="m", prompt_tokens=1) for _ in range(7)]
    assert all(a.source == "local" and a.approximate for a in local)
    assert [a.allowed for a in local] == [True] * 5 + [False] * 2  # this replica's half of RPM 10
    assert local[0].headers()["x-ratelimit-limit-requests"] == "5"
    assert sample(limiter, "glmserve_admission_fail_open_decisions_total") == 7
    assert sample(limiter, "glmserve_admission_store_up") == 0
    # the locally admitted request settles locally
    assert await limiter.settle(local[0], output_tokens=3)
    server.start()
    await asyncio.sleep(RETRY_S)
    back = await limiter.admit(acme, model="m", prompt_tokens=1)
    assert back.source == "store"
    assert back.decision.requests.remaining == 8
    assert sample(limiter, "glmserve_admission_store_up") == 1
    await limiter.aclose()


async def test_settlement_waits_out_an_outage(server: RedisServer) -> None:
    limiter = limiter_for(server, OutagePolicy.FAIL_CLOSED)
    acme = tenant(otpm=1000, concurrent=1)
    admission = await limiter.admit(acme, model="m", prompt_tokens=1, max_tokens=600)
    server.stop()
    settling = limiter.settle(admission, output_tokens=100)
    await asyncio.sleep(3 * RETRY_S)
    assert not settling.done()
    assert sample(limiter, "glmserve_admission_settlements_total", outcome="deferred") == 1
    server.start()
    assert await asyncio.wait_for(settling, timeout=5) is True  # reconnected by itself, settled once
    nxt = await limiter.admit(acme, model="m", prompt_tokens=1, max_tokens=1)
    assert nxt.allowed  # the slot was freed
    refilled = (nxt.decision.now_us - admission.decision.now_us) * 1000 / 60e6  # server clock, real time
    assert nxt.decision.output_tokens.remaining == math.floor(1000 - 100 - 1 + refilled)
    await limiter.aclose()
