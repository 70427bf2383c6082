"""The Serve application from a ServeConfig: which of Ray Serve's request routers spreads the calls,
and what the ingress is told."""

from __future__ import annotations

from pathlib import Path

from glmserve.common.config import ServeConfig
from glmserve.serving import app
from glmserve.serving.models import ResolvedModel
from glmserve.serving.topology import SERVE_ROUTER, plan

MODEL = ResolvedModel("glm-4.6-tiny", Path("/models/glm-4.6-tiny"), 4096, False)


def _router_class(cfg: ServeConfig, router: str | None = None) -> str | None:
    engines = plan(app.topology_spec(MODEL, cfg, "cpu", router)).engines
    deployment = engines["decode"].llm_config.deployment_config
    return (deployment.get("request_router_config") or {}).get("request_router_class")


def test_without_glmserves_router_serve_uses_its_default_or_the_prefix_affinity_router() -> None:
    # Serve's power-of-two choices, named by its own module (glmserve.serving.topology.SERVE_ROUTER)
    assert _router_class(ServeConfig(replicas=4, router="off")) == SERVE_ROUTER
    prefix = ServeConfig(replicas=4, router="off", serve_router="prefix-affinity")
    assert _router_class(prefix) == "ray.serve.llm.request_router:PrefixCacheAffinityRouter"


def test_with_glmserves_router_calls_go_where_it_chose() -> None:
    cfg = ServeConfig(replicas=4)
    assert _router_class(cfg, "127.0.0.1:50051") == "glmserve.serving.routing.pinned:PinnedRouter"


def test_the_migration_settings_reach_the_ingress() -> None:
    cfg = ServeConfig(migration_limit=0, stall_timeout_s=7.5)
    migration = plan(app.topology_spec(MODEL, cfg, "cpu")).settings.migration
    assert (migration.limit, migration.stall_timeout_s) == (0, 7.5)


def test_the_body_limit_reaches_the_ingress_in_bytes() -> None:
    settings = plan(app.topology_spec(MODEL, ServeConfig(max_body_mib=2), "cpu")).settings
    assert settings.request_limits.max_body_bytes == 2 << 20
    assert plan(app.topology_spec(MODEL, ServeConfig(), "cpu")).settings.request_limits.max_body_bytes == 16 << 20
