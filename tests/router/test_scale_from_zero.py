"""A model whose decode pool scales from zero: its requests wait in flow control while the pool is
empty, are routed when a replica registers (the wait measured as a cold start), and are refused
with 503 + Retry-After past queue_ttl_s."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest

from glmserve.common.errors import OverloadedError
from glmserve.router.config import RouterConfig
from glmserve.router.router import Router
from glmserve.router.types import Load, WorkerInfo
from tests.router.flow.conftest import admit, settle, ticket


def empty_router(clock: list[float], **flow: object) -> Router:
    config = RouterConfig.model_validate({"flow": {"scale_from_zero": ["m"], **flow}})
    return Router(config, clock=lambda: clock[0])


def _decode(worker_id: str) -> WorkerInfo:
    return WorkerInfo(worker_id, "decode", "m", address=f"{worker_id}:1", max_running_requests=2)


@pytest.mark.asyncio
async def test_requests_wait_for_the_first_replica_and_the_wait_is_measured() -> None:
    clock = [100.0]
    router = empty_router(clock)
    waiting = [asyncio.create_task(admit(router, ticket(f"r{i}"))) for i in range(2)]
    await settle()
    assert not any(t.done() for t in waiting)
    router.sweep()
    text = generate_latest(router.metrics.registry).decode()
    assert 'glmserve_router_pool_requests{model="m",role="decode",state="queued"} 2.0' in text
    clock[0] = 142.0  # the replica took 42 s to start
    router.register(_decode("w0"), Load())
    decisions = await asyncio.wait_for(asyncio.gather(*waiting), 1)
    assert {d.decode.worker_id for d in decisions} == {"w0"}
    text = generate_latest(router.metrics.registry).decode()
    assert 'glmserve_router_cold_start_seconds_sum{model="m"} 42.0' in text
    assert 'glmserve_router_cold_start_seconds_count{model="m"} 1.0' in text
    assert 'glmserve_router_last_cold_start_seconds{model="m"} 42.0' in text


@pytest.mark.asyncio
async def test_a_request_outliving_the_queue_ttl_is_refused_with_retry_after() -> None:
    router = empty_router([0.0], queue_ttl_s=0.05, retry_after_s=3)
    with pytest.raises(OverloadedError) as refused:
        await asyncio.wait_for(admit(router, ticket("r0")), 1)
    assert (refused.value.code, refused.value.retry_after_s) == ("flow_ttl", 3)


def test_other_models_without_replicas_are_still_refused_at_once() -> None:
    router = empty_router([0.0])
    assert router.free("other") == 1  # routed at once, to answer no_endpoints
    assert router.free("m") == 0
