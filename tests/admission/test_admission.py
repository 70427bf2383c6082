"""Admission semantics, run against both stores on one manual clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from glmserve.admission.backend import LimitsBackend
from glmserve.admission.limiter import Limiter, LimiterConfig
from glmserve.admission.memory import MemoryBackend
from glmserve.admission.model import Cost, Dimension, Rates
from glmserve.common.errors import RateLimitedError
from tests.admission.conftest import ManualClock
from tests.admission.helpers import tenant

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def limiter(backend: LimitsBackend, clock: ManualClock) -> AsyncIterator[Limiter]:
    limiter = Limiter(backend, LimiterConfig(lease_ttl_s=30), local=MemoryBackend(clock))
    yield limiter
    await limiter.aclose()


async def test_requests_per_minute_burst_then_refill(limiter: Limiter, clock: ManualClock) -> None:
    acme = tenant(rpm=5)
    allowed = [(await limiter.admit(acme, model="m", prompt_tokens=1, max_tokens=1)).allowed for _ in range(7)]
    assert allowed == [True] * 5 + [False] * 2
    refused = await limiter.admit(acme, model="m", prompt_tokens=1, max_tokens=1)
    assert refused.decision.limited_by is Dimension.REQUESTS
    assert refused.decision.retry_after_us == 12_000_000  # one request per 60 s / 5
    clock.advance(11.999)
    assert not (await limiter.admit(acme, model="m", prompt_tokens=1, max_tokens=1)).allowed
    clock.advance(0.001)
    assert (await limiter.admit(acme, model="m", prompt_tokens=1, max_tokens=1)).allowed
    assert not (await limiter.admit(acme, model="m", prompt_tokens=1, max_tokens=1)).allowed


async def test_tenants_have_separate_buckets(limiter: Limiter) -> None:
    a, b = tenant(rpm=1, tenant_id="a"), tenant(rpm=1, tenant_id="b")
    assert (await limiter.admit(a, model="m", prompt_tokens=1)).allowed
    assert (await limiter.admit(b, model="m", prompt_tokens=1)).allowed
    assert not (await limiter.admit(a, model="m", prompt_tokens=1)).allowed


async def test_refused_admission_takes_nothing(limiter: Limiter) -> None:
    acme = tenant(rpm=10, itpm=100, otpm=1000)
    first = await limiter.admit(acme, model="m", prompt_tokens=80, max_tokens=10)
    assert first.allowed
    refused = await limiter.admit(acme, model="m", prompt_tokens=30, max_tokens=10)
    assert not refused.allowed
    assert refused.decision.limited_by is Dimension.INPUT_TOKENS
    # 10 input tokens short at 100/min: 6 s
    assert refused.decision.retry_after_us == 6_000_000
    assert (refused.decision.requests.remaining, refused.decision.output_tokens.remaining) == (9, 990)
    nxt = await limiter.admit(acme, model="m", prompt_tokens=20, max_tokens=10)
    assert nxt.allowed
    assert (nxt.decision.requests.remaining, nxt.decision.input_tokens.remaining) == (8, 0)


async def test_longest_wait_names_the_limit(limiter: Limiter, clock: ManualClock) -> None:
    acme = tenant(rpm=2, otpm=60)
    assert (await limiter.admit(acme, model="m", prompt_tokens=0, max_tokens=60)).allowed
    assert (await limiter.admit(acme, model="m", prompt_tokens=0, max_tokens=1)).allowed is False
    clock.advance(30)  # one request back, 30 output tokens back
    refused = await limiter.admit(acme, model="m", prompt_tokens=0, max_tokens=50)
    assert refused.decision.limited_by is Dimension.OUTPUT_TOKENS
    assert refused.decision.retry_after_us == 20_000_000
    assert refused.retry_after_s == 20.0


async def test_settlement_refunds_unused_reservation(limiter: Limiter) -> None:
    acme = tenant(otpm=1000)
    admission = await limiter.admit(acme, model="m", prompt_tokens=5, max_tokens=600)
    assert admission.decision.output_tokens.remaining == 400
    assert await limiter.settle(admission, output_tokens=100) is True
    nxt = await limiter.admit(acme, model="m", prompt_tokens=5, max_tokens=10)
    assert nxt.decision.output_tokens.remaining == 1000 - 100 - 10


async def test_settlement_charges_overrun_and_debt_blocks(limiter: Limiter, clock: ManualClock) -> None:
    # no max_tokens: the plan's default (100) is reserved, the engine may write up to max_output (500)
    acme = tenant(otpm=300, max_output=500, default_output=100)
    admission = await limiter.admit(acme, model="m", prompt_tokens=5)
    assert (admission.cost.output_tokens, admission.engine_max_tokens) == (100, 500)
    assert await limiter.settle(admission, output_tokens=450)  # 350 more than reserved: 300 - 450 = -150
    refused = await limiter.admit(acme, model="m", prompt_tokens=5, max_tokens=1)
    assert refused.decision.limited_by is Dimension.OUTPUT_TOKENS
    assert refused.decision.output_tokens.remaining == -150
    assert refused.headers()["x-ratelimit-remaining-output-tokens"] == "0"
    assert refused.decision.retry_after_us == 30_200_000  # 151 tokens at 5/s
    clock.advance(30.2)
    assert (await limiter.admit(acme, model="m", prompt_tokens=5, max_tokens=1)).allowed


async def test_settlement_corrects_input_tokens(limiter: Limiter) -> None:
    acme = tenant(itpm=1000)
    admission = await limiter.admit(acme, model="m", prompt_tokens=300, max_tokens=1)
    assert await limiter.settle(admission, output_tokens=1, input_tokens=250)
    nxt = await limiter.admit(acme, model="m", prompt_tokens=0, max_tokens=1)
    assert nxt.decision.input_tokens.remaining == 750


async def test_refund_never_overfills(limiter: Limiter, clock: ManualClock) -> None:
    acme = tenant(otpm=100)
    admission = await limiter.admit(acme, model="m", prompt_tokens=0, max_tokens=80)
    clock.advance(60)  # full again while the request ran
    assert await limiter.settle(admission, output_tokens=0)
    nxt = await limiter.admit(acme, model="m", prompt_tokens=0, max_tokens=1)
    assert nxt.decision.output_tokens.remaining == 99


async def test_settles_exactly_once(limiter: Limiter, backend: LimitsBackend) -> None:
    acme = tenant(otpm=1000)
    admission = await limiter.admit(acme, model="m", prompt_tokens=0, max_tokens=500)
    results = await asyncio.gather(*(limiter.settle(admission, output_tokens=0) for _ in range(5)))
    assert sorted(results) == [False] * 4 + [True]
    # the store refuses a second settlement of the same lease too (another replica, a retry)
    assert not await backend.settle("acme", acme.limits.rates, admission.lease_id, admission.cost)
    nxt = await limiter.admit(acme, model="m", prompt_tokens=0, max_tokens=1)
    assert nxt.decision.output_tokens.remaining == 999


async def test_refused_or_unlimited_admissions_settle_to_nothing(limiter: Limiter) -> None:
    limited = tenant(rpm=1)
    await limiter.admit(limited, model="m", prompt_tokens=0)
    refused = await limiter.admit(limited, model="m", prompt_tokens=0)
    assert not await limiter.settle(refused, output_tokens=0)
    free = await limiter.admit(tenant(), model="m", prompt_tokens=10**9)
    assert free.allowed
    assert free.source == "none"
    assert free.headers() == {}
    assert not await limiter.settle(free, output_tokens=5)


async def test_concurrency_slots(limiter: Limiter) -> None:
    acme = tenant(concurrent=2)
    first = await limiter.admit(acme, model="m", prompt_tokens=1)
    second = await limiter.admit(acme, model="m", prompt_tokens=1)
    assert (first.allowed, second.allowed, second.decision.in_flight) == (True, True, 2)
    refused = await limiter.admit(acme, model="m", prompt_tokens=1)
    assert refused.decision.limited_by is Dimension.CONCURRENCY
    assert refused.retry_after_s == 1.0
    assert "at most 2 may run at once" in refused.error().message
    await limiter.settle(first, output_tokens=3)
    assert (await limiter.admit(acme, model="m", prompt_tokens=1)).allowed


async def test_unrenewed_lease_expires(limiter: Limiter, clock: ManualClock) -> None:
    """A crashed replica never settles nor renews: its slot comes back after the lease TTL."""
    acme = tenant(concurrent=1, otpm=1000)
    crashed = await limiter.admit(acme, model="m", prompt_tokens=1, max_tokens=100)
    clock.advance(29.999)
    assert not (await limiter.admit(acme, model="m", prompt_tokens=1, max_tokens=100)).allowed
    clock.advance(0.001)
    later = await limiter.admit(acme, model="m", prompt_tokens=1, max_tokens=100)
    assert later.allowed
    assert later.decision.in_flight == 1
    # the expired lease is gone: settling it now refunds nothing
    assert not await limiter.settle(crashed, output_tokens=0)


async def test_renewed_lease_survives(backend: LimitsBackend, clock: ManualClock) -> None:
    rates = tenant(concurrent=1).limits.rates
    assert (await backend.admit("t", rates, Cost(0, 1), "lease-1", 10_000_000)).allowed
    clock.advance(8)
    assert await backend.renew("t", "lease-1", 10_000_000)  # now expires at 18 s
    clock.advance(8)
    assert not (await backend.admit("t", rates, Cost(0, 1), "lease-2", 10_000_000)).allowed
    clock.advance(2)
    assert not await backend.renew("t", "lease-1", 10_000_000)  # expired exactly at 18 s
    assert (await backend.admit("t", rates, Cost(0, 1), "lease-2", 10_000_000)).allowed
    assert not await backend.renew("t", "missing", 10_000_000)


async def test_headers_and_429(limiter: Limiter) -> None:
    acme = tenant(rpm=60, itpm=1000, otpm=500)
    ok = await limiter.admit(acme, model="m", prompt_tokens=100, max_tokens=100)
    assert ok.headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        # output has the smaller share left (400/500 < 900/1000), so it is "the" token limit
        "x-ratelimit-limit-tokens": "500",
        "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "12s",
        "x-ratelimit-limit-input-tokens": "1000",
        "x-ratelimit-remaining-input-tokens": "900",
        "x-ratelimit-reset-input-tokens": "6s",
        "x-ratelimit-limit-output-tokens": "500",
        "x-ratelimit-remaining-output-tokens": "400",
        "x-ratelimit-reset-output-tokens": "12s",
    }
    refused = await limiter.admit(acme, model="m", prompt_tokens=950, max_tokens=1)
    headers = refused.headers()
    assert headers["x-ratelimit-limit-tokens"] == "1000"  # the refusing bucket, not the emptier one
    assert headers["x-ratelimit-remaining-tokens"] == "900"
    assert headers["x-ratelimit-remaining-requests"] == "59"
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("3", "3000")  # 50 tokens at 1000/min
    error = refused.error()
    assert isinstance(error, RateLimitedError)
    assert (error.kind.http_status, error.code, error.retry_after_s) == (429, "rate_limit_exceeded", 3.0)
    assert error.message == (
        "Rate limit reached for input tokens per minute on plan 'pro': limit 1000, remaining 900, "
        "requested 950. Please try again in 3s."
    )


async def test_cancelled_request_settles_what_it_used(limiter: Limiter) -> None:
    """A client disconnect cancels the serving task; the usage recorded so far is settled anyway."""
    acme = tenant(otpm=1000)
    admission = await limiter.admit(acme, model="m", prompt_tokens=0, max_tokens=300)
    streaming = asyncio.Event()

    async def serve() -> None:
        async with limiter.settling(admission) as usage:
            usage.output_tokens = 7
            streaming.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(serve())
    await streaming.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)  # the settlement runs on its own task
    assert not await limiter.settle(admission, output_tokens=0)  # already settled
    nxt = await limiter.admit(acme, model="m", prompt_tokens=0, max_tokens=1)
    assert nxt.decision.output_tokens.remaining == 1000 - 7 - 1


async def test_failed_request_is_refunded(limiter: Limiter) -> None:
    acme = tenant(otpm=1000, concurrent=1)
    admission = await limiter.admit(acme, model="m", prompt_tokens=0, max_tokens=300)
    with pytest.raises(RuntimeError):
        async with limiter.settling(admission):
            raise RuntimeError("engine died")
    await asyncio.sleep(0.2)
    nxt = await limiter.admit(acme, model="m", prompt_tokens=0, max_tokens=1)
    assert nxt.allowed
    assert nxt.decision.output_tokens.remaining == 999


async def test_a_replayed_admission_takes_nothing_twice(backend: LimitsBackend) -> None:
    """A retry after a lost reply (timeout, dropped connection) carries the same lease id."""
    rates = Rates(10, 0, 100, 1)
    first = await backend.admit("t", rates, Cost(0, 30), "lease-1", 10_000_000)
    replay = await backend.admit("t", rates, Cost(0, 30), "lease-1", 10_000_000)
    assert first.allowed
    assert replay.allowed
    assert (replay.requests.remaining, replay.output_tokens.remaining, replay.in_flight) == (9, 70, 1)
    assert not (await backend.admit("t", rates, Cost(0, 30), "lease-2", 10_000_000)).allowed  # 1 slot
    assert await backend.settle("t", rates, "lease-1", Cost(0, 30))
    assert not await backend.settle("t", rates, "lease-1", Cost(0, 30))  # a replayed settlement
    assert (await backend.admit("t", rates, Cost(0, 1), "lease-3", 10_000_000)).output_tokens.remaining == 99
