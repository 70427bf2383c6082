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


SCALE = {"autoscaling_policy": "glmserve", "router": "on"}


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"replicas": 0, **SCALE}, "replicas 0 .* needs a maximum: set max_replicas"),
        ({"replicas": 0, "max_replicas": 2, "router": "on"}, "needs autoscaling_policy glmserve and the local router"),
        ({"replicas": 0, "max_replicas": 2, **SCALE, "router": "off"}, "needs autoscaling_policy glmserve"),
        ({"disaggregated": True, "decode": {"replicas": 0}, **SCALE}, "set decode.max_replicas"),
        ({"disaggregated": True, "prefill": {"replicas": 0}, **SCALE}, "set prefill.max_replicas"),
        ({"disaggregated": True, "prefill": {"replicas": 0, "max_replicas": 2}}, "prefill.replicas 0 .* glmserve"),
    ],
)
def test_scale_from_zero_needs_a_maximum_glmserves_policy_and_the_local_router(
    settings: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        ServeConfig.model_validate(settings)


@pytest.mark.parametrize(
    "settings",
    [{"replicas": 0, "max_replicas": 2}, {"disaggregated": True, "decode": {"replicas": 0, "max_replicas": 2}}],
)
def test_the_pool_that_decodes_may_scale_from_zero(settings: dict[str, object]) -> None:
    cfg = ServeConfig.model_validate({**settings, **SCALE})
    assert cfg.scales_from_zero
    assert not ServeConfig.model_validate({**SCALE, "replicas": 1, "max_replicas": 2}).scales_from_zero


def test_a_prefill_pool_may_scale_from_zero_the_router_holds_nothing_for_it() -> None:
    """Decode engines prefill locally while it is empty: no request waits for a prefill replica."""
    cfg = ServeConfig.model_validate({"disaggregated": True, "prefill": {"replicas": 0, "max_replicas": 2}, **SCALE})
    assert cfg.prefill.replicas == 0 and not cfg.scales_from_zero
