"""`glmserve up` settings that depend on each other."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from glmserve.common.config import ServeConfig


@pytest.mark.parametrize("router", [{"replicas": 2}, {"router": "on"}, {"router_address": "127.0.0.1:50051"}])
def test_serves_prefix_affinity_router_needs_glmserves_router_off(router: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="serve_router applies only where glmserve's router does not run"):
        ServeConfig.model_validate({"serve_router": "prefix-affinity", **router})


def test_serves_prefix_affinity_router_with_the_router_off() -> None:
    cfg = ServeConfig(replicas=2, router="off", serve_router="prefix-affinity")
    assert not cfg.runs_local_router
