from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis

from glmserve.admission.backend import LimitsBackend
from glmserve.admission.memory import MemoryBackend
from glmserve.admission.redis_backend import RedisBackend
from tests.admission.redis_server import RedisServer, serve_redis

T0_US = 1_700_000_000_000_000  # a realistic epoch in microseconds: large numbers stress the arithmetic


class ManualClock:
    """Microseconds that move only when a test says so; both backends read it."""

    def __init__(self) -> None:
        self.now_us = T0_US

    def __call__(self) -> int:
        return self.now_us

    def advance(self, seconds: float) -> None:
        self.now_us += round(seconds * 1_000_000)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from serve_redis(tmp_path_factory)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, clock: ManualClock) -> AsyncIterator[LimitsBackend]:
    """Both stores on the same manual clock: every semantic test runs against each."""
    store: LimitsBackend
    if request.param == "memory":
        store = MemoryBackend(clock)
    else:
        store = RedisBackend.from_url(request.getfixturevalue("redis_url"), clock=clock)
    yield store
    await store.aclose()
