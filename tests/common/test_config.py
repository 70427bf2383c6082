"""`glmserve up` settings that depend on each other."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from glmserve.common.config import PoolConfig, ServeConfig


@pytest.mark.parametrize("router", [{"replicas": 2}, {"router": "on"}, {"router_address": "127.0.0.1:50051"}])
def test_serves_prefix_affinity_router_needs_glmserves_router_off(router: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="serve_router applies only where glmserve's router does not run"):
        ServeConfig.model_validate({"serve_router": "prefix-affinity", **router})


def test_serves_prefix_affinity_router_with_the_router_off() -> None:
    cfg = ServeConfig(replicas=2, router="off", serve_router="prefix-affinity")
    assert not cfg.runs_local_router


@pytest.mark.parametrize("initial", [0, 3])
def test_initial_replicas_lie_within_the_pools_bounds(initial: int) -> None:
    with pytest.raises(ValidationError, match="initial_replicas"):
        PoolConfig(replicas=1, max_replicas=2, initial_replicas=initial)


def test_a_pool_starts_at_initial_replicas() -> None:
    assert PoolConfig(replicas=1, max_replicas=3, initial_replicas=2).start_replicas == 2
    assert PoolConfig(replicas=1, max_replicas=3).start_replicas == 1
