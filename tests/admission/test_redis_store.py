"""Properties only the shared store has: round trips, the server clock, key expiry, batching."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from glmserve.admission.limiter import Limiter, LimiterConfig
from glmserve.admission.model import Cost, Decision, Rates
from glmserve.admission.redis_backend import RedisBackend
from glmserve.common.errors import BackendError
from tests.admission.helpers import tenant

pytestmark = pytest.mark.asyncio


def command_calls(url: str) -> dict[str, int]:
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}


async def test_one_round_trip_per_admission(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    sent: list[str] = []
    execute = client.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]))
        return await execute(*args, **kwargs)

    client.execute_command = counting  # type: ignore[method-assign]
    limiter = Limiter(RedisBackend(client))
    acme = tenant(rpm=1000, itpm=10**6, otpm=10**6, concurrent=100)
    await limiter.admit(acme, model="m", prompt_tokens=1)  # loads the script, opens the connection
    sent.clear()
    for _ in range(20):  # one at a time: no batching can hide extra round trips
        assert (await limiter.admit(acme, model="m", prompt_tokens=10, max_tokens=10)).allowed
    assert sent == ["EVALSHA"] * 20
    await limiter.aclose()


async def test_concurrent_admissions_share_round_trips(redis_url: str) -> None:
    limiter = Limiter(RedisBackend.from_url(redis_url))
    acme = tenant(rpm=100)
    await limiter.admit(acme, model="m", prompt_tokens=1)
    with redis.Redis.from_url(redis_url) as client:
        client.config_resetstat()
    results = await asyncio.gather(*(limiter.admit(acme, model="m", prompt_tokens=1) for _ in range(200)))
    assert sum(a.allowed for a in results) == 99  # each is still its own decision
    assert command_calls(redis_url)["evalsha"] <= 10
    await limiter.aclose()


async def test_an_operation_queued_as_the_last_flusher_ends_is_sent(redis_url: str) -> None:
    """The caller of one operation resumes before its flusher has finished; its next operation must
    start a flusher of its own instead of waiting for someone else's (it used to wait for the
    lease renewer: 670 ms with one flusher)."""
    limiter = Limiter(RedisBackend.from_url(redis_url, max_in_flight=1))
    acme = tenant(rpm=1000)
    for _ in range(5):
        async with asyncio.timeout(0.5):  # not wait_for: its extra task would hide the race
            assert (await limiter.admit(acme, model="m", prompt_tokens=1)).allowed
    await limiter.aclose()


async def test_server_clock_and_key_expiry(redis_url: str) -> None:
    """Without a test clock the script uses Redis TIME; idle tenants' keys vanish once full again."""
    store = RedisBackend.from_url(redis_url)
    rates = Rates(600, 0, 0, 0)  # one request per 0.1 s
    decision = await store.admit("idle", rates, Cost(0, 0), "l1", 200_000)
    with redis.Redis.from_url(redis_url) as client:
        assert abs(decision.now_us / 1e6 - float(client.time()[0])) < 5
        bucket_ttl, lease_ttl = client.pttl("glmserve:rl:{idle}:b"), client.pttl("glmserve:rl:{idle}:l")
        assert 1000 <= bucket_ttl <= 1100
        assert 1000 <= lease_ttl <= 1200
        await asyncio.sleep(1.3)
        assert client.keys("glmserve:rl:*") == []
    await store.aclose()


async def test_open_leases_are_renewed_and_dropped_ones_expire(redis_url: str) -> None:
    limiter = Limiter(RedisBackend.from_url(redis_url), LimiterConfig(lease_ttl_s=0.3))
    acme = tenant(concurrent=1)
    running = await limiter.admit(acme, model="m", prompt_tokens=1)
    await asyncio.sleep(1.0)  # three TTLs: only renewal keeps the slot
    assert not (await limiter.admit(acme, model="m", prompt_tokens=1)).allowed
    await limiter.settle(running, output_tokens=1)
    forgotten = await limiter.admit(acme, model="m", prompt_tokens=1)
    assert forgotten.allowed
    del forgotten  # a caller that never settles: renewal stops, the lease expires
    gc.collect()
    await asyncio.sleep(0.5)
    assert (await limiter.admit(acme, model="m", prompt_tokens=1)).allowed
    assert limiter.metrics.registry.get_sample_value("glmserve_admission_leases_lost_total") == 0
    await limiter.aclose()


async def test_a_malformed_operation_fails_alone(redis_url: str) -> None:
    store = RedisBackend.from_url(redis_url)
    rates = Rates(10, 0, 0, 0)
    bad, good = await asyncio.gather(
        store.admit("t", rates, Cost(0, 1), "lease with spaces", 1_000_000),
        store.admit("t", rates, Cost(0, 1), "good", 1_000_000),
        return_exceptions=True,
    )
    assert isinstance(bad, BackendError)
    assert isinstance(good, Decision)
    assert good.allowed
    assert good.requests.remaining == 9  # the bad one took nothing
    await store.aclose()


async def test_an_admission_whose_caller_went_away_is_refunded(redis_url: str) -> None:
    limiter = Limiter(RedisBackend.from_url(redis_url))
    acme = tenant(concurrent=1, otpm=1000)
    pending = asyncio.create_task(limiter.admit(acme, model="m", prompt_tokens=0, max_tokens=500))
    await asyncio.sleep(0)  # queued for the next batch
    pending.cancel()
    await asyncio.sleep(0.1)
    later = await limiter.admit(acme, model="m", prompt_tokens=0, max_tokens=1)
    assert later.allowed  # the orphan's slot was released...
    assert later.decision.output_tokens.remaining >= 999  # ...and its reservation refunded
    await limiter.aclose()


async def test_a_settlement_rides_along_with_the_next_admission(redis_url: str) -> None:
    """A settlement waits (up to defer_s) for an admission and shares its round trip; it still
    goes first, so the admission sees the slot it freed."""
    limiter = Limiter(RedisBackend.from_url(redis_url, defer_s=10.0))
    acme = tenant(rpm=1000, concurrent=1)
    running = await limiter.admit(acme, model="m", prompt_tokens=1)
    with redis.Redis.from_url(redis_url) as client:
        client.config_resetstat()
    settled = limiter.settle(running, output_tokens=1)
    await asyncio.sleep(0.05)
    assert not settled.done()  # nothing urgent went to Redis yet
    assert (await limiter.admit(acme, model="m", prompt_tokens=1)).allowed  # the slot was freed first
    assert await settled
    assert command_calls(redis_url)["evalsha"] == 1
    await limiter.aclose()


async def test_a_settlement_alone_is_sent_after_defer_s(redis_url: str) -> None:
    limiter = Limiter(RedisBackend.from_url(redis_url, defer_s=0.05))
    acme = tenant(rpm=1000, concurrent=1)
    running = await limiter.admit(acme, model="m", prompt_tokens=1)
    assert await asyncio.wait_for(limiter.settle(running, output_tokens=1), 1.0)
    with redis.Redis.from_url(redis_url) as client:
        assert client.zcard("glmserve:rl:{acme}:l") == 0  # its lease is gone from the store
    await limiter.aclose()
