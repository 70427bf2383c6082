"""What a router restart keeps: `glmserve up`'s router process is stopped and started again.
Limits in Redis survive it; limits in the router's memory (and its queue) do not."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from glmserve.common.errors import RateLimitedError
from glmserve.router.client import RouterClient
from glmserve.router.types import WorkerInfo
from glmserve.serving.local_router import LocalRouter
from tests.admission.redis_server import RedisServer, serve_redis
from tests.router.harness import MODEL, tokens
from tests.router.test_admitter import write_tenants

pytestmark = pytest.mark.slow  # two router processes per test


@pytest.fixture(scope="module")
def limits_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from serve_redis(tmp_path_factory)


async def routes_until_refused(target: str, token: str, prefix: str) -> int:
    """Registers an engine (as engines do with a restarted router) and routes acme's requests,
    each completed at once, until the plan refuses one; how many were admitted."""
    async with RouterClient(target, route_timeout_s=5, token=token) as client:
        await client.register(WorkerInfo("engine-0", "decode", MODEL, address="engine-0:8000"))
        for n in range(10):
            try:
                decision = await client.route(f"{prefix}{n}", MODEL, tokens(n, 40), tenant="acme")
            except RateLimitedError:
                return n
            assert decision.admission is not None
            assert await client.complete(f"{prefix}{n}")
    raise AssertionError("the plan never refused")


@pytest.mark.parametrize("store", ["redis", "memory"])
def test_a_router_restart_keeps_redis_limits_and_loses_memory_ones(
    tmp_path: Path, limits_redis: RedisServer, store: str
) -> None:
    tenants = write_tenants(tmp_path / "tenants.yaml", requestsPerMinute=3)
    router = LocalRouter(tmp_path, tenants_file=tenants, redis_url=limits_redis.url if store == "redis" else None)
    try:
        assert asyncio.run(routes_until_refused(router.start(), router.token, "before-")) == 3
        router.stop()
        admitted_after = asyncio.run(routes_until_refused(router.start(), router.token, "after-"))
    finally:
        router.stop()
    assert admitted_after == (0 if store == "redis" else 3)
