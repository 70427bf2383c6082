"""The topology builder, without Ray: `glmserve up` and the RayService describe their pools as
data, and the same inputs give the same deployments."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from glmserve.common.config import PoolConfig, ServeConfig
from glmserve.common.deployment import ModelDeploymentSpec
from glmserve.common.deployment_plan import PlanStatus, plan_for
from glmserve.common.nodegroup import NodeGroupSpec
from glmserve.common.placement import pool_resource
from glmserve.serving import app, entrypoint
from glmserve.serving.autoscaling import POLICY
from glmserve.serving.engine.registration import RouterLink
from glmserve.serving.engine.server import EngineServer
from glmserve.serving.models import ResolvedModel
from glmserve.serving.topology import PINNED_ROUTER, SERVE_ROUTER, Topology, plan

ROUTER = "127.0.0.1:50051"
# decode autoscales 1..2 replicas of 8 sequences, each queueing 2 per sequence; prefill runs 1
RAYSERVICE = {
    "model": {"name": "glm-4.6-tiny", "source": "pvc://glmserve-models/glm-4.6-tiny"},
    "prefill": {"nodeGroup": "cpu", "replicas": 1, "maxConcurrency": 8},
    "decode": {"nodeGroup": "cpu", "autoscaling": {"minReplicas": 1, "maxReplicas": 2}, "maxConcurrency": 8},
    "mtp": {"enabled": False},
}


def rayservice(router: str | None, ingress_replicas: int = 1) -> Topology:
    groups = {
        "cpu": NodeGroupSpec.model_validate(
            {"cpu": {"cores": 1, "memoryGiB": 3}, "maxNodes": 3, "provisioner": "static"}
        )
    }
    spec = ModelDeploymentSpec.model_validate(RAYSERVICE | {"ingress": {"replicas": ingress_replicas}})
    chosen = plan_for(spec, groups)
    assert chosen.feasible, chosen.shortfalls
    return plan(entrypoint.topology_spec(spec, PlanStatus.of(chosen, groups), router))


def local(router: str | None, **overrides: Any) -> Topology:
    settings: dict[str, Any] = {
        "disaggregated": True,
        "prefill": PoolConfig(replicas=1),
        "decode": PoolConfig(replicas=1, max_replicas=2),
        "max_ongoing_requests": 8,
        "max_queued_requests": 16,
        "autoscaling_policy": "glmserve",  # what the RayService always runs
    }
    cfg = ServeConfig(**(settings | overrides))
    resolved = ModelDeploymentSpec.model_validate(RAYSERVICE).model.resolve()
    model = ResolvedModel("glm-4.6-tiny", Path("/models/glm-4.6-tiny"), resolved.max_context, resolved.thinking_default)
    return plan(app.topology_spec(model, cfg, "cpu", router))


def deployments(topology: Topology) -> dict[str, Any]:
    """What Serve deploys per pool, less what legitimately comes from each path's own sources
    (engine arguments, where the weights are, placement bundles)."""
    out = {}
    for role, engine in topology.engines.items():
        config = dict(engine.llm_config.deployment_config)
        if "autoscaling_config" in config:  # local mode's own target; the RayService keeps Serve's
            config["autoscaling_config"] = dict(config["autoscaling_config"])
            config["autoscaling_config"].pop("target_ongoing_requests", None)
        link = dict(engine.bind_kwargs)["router"]
        # local mode picks free KV-event ports; a RayService pod has its ports to itself
        link = replace(link, port_base=None) if link is not None else None
        out[role] = (engine.name_prefix, engine.engine_cls, config, link)
    return out


def test_both_paths_deploy_the_same_pools_for_the_same_inputs() -> None:
    ours, theirs = local(ROUTER), rayservice(ROUTER)
    assert deployments(ours) == deployments(theirs)
    prefix, cls, config, link = deployments(ours)["decode"]
    assert (prefix, cls, link) == ("Decode:", EngineServer, RouterLink((ROUTER,), "decode", "glm-4.6-tiny"))
    scaling = config.pop("autoscaling_config")
    assert config == {
        "ray_actor_options": {"num_cpus": 0},
        "max_ongoing_requests": 2 * (8 + 16),
        "graceful_shutdown_timeout_s": 600.0,
        "graceful_shutdown_wait_loop_s": 1.0,
        "request_router_config": {"request_router_class": PINNED_ROUTER},
    }
    # glmserve's policy, with the same targets from the CRD (maxConcurrency) and the flags (8 running).
    policy = scaling.pop("policy")
    assert scaling == {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2} | dict.fromkeys(
        ("upscale_delay_s", "downscale_delay_s", "downscale_to_zero_delay_s"), 0
    )
    assert (policy["policy_function"], policy["policy_kwargs"]["pool"]) == (POLICY, "Decode")
    assert policy["policy_kwargs"]["targets"]["running_per_replica"] == 8
    assert deployments(ours)["prefill"][2]["num_replicas"] == 1
    # The ingress counts the decode pool's largest size: 2 replicas x 8 running, x 16 waiting.
    for topology in (ours, theirs):
        [served] = topology.settings.models
        assert (served.capacity, served.max_waiting, topology.settings.router_address) == (16, 32, ROUTER)
        assert topology.ingress_options["num_replicas"] == 1


def test_the_paths_differ_only_in_their_data() -> None:
    ours, theirs = local(None, metrics_tenants=("acme",)), rayservice(None)
    assert all(dict(e.bind_kwargs)["router"] is None for e in (*ours.engines.values(), *theirs.engines.values()))
    router = ours.engines["decode"].llm_config.deployment_config["request_router_config"]
    assert router == {"request_router_class": SERVE_ROUTER}
    # Local mode binds cores and passes its limits; each ingress pod reads its own environment.
    assert dict(ours.engines["decode"].bind_kwargs)["cpu_binds"]
    assert dict(theirs.engines["decode"].bind_kwargs)["cpu_binds"] is None
    assert ours.settings.limits is not None and theirs.settings.limits is None
    assert ours.settings.metrics_tenants == ("acme",)
    assert ours.ingress_options["ray_actor_options"] == {"num_cpus": 0}
    assert theirs.ingress_options["ray_actor_options"] == {"num_cpus": 0, "resources": {pool_resource("ingress"): 1}}
    # The RayService places every rank on its node group's bundles; local mode on Ray's defaults.
    assert ours.engines["decode"].llm_config.placement_group_config is None
    assert theirs.engines["decode"].llm_config.placement_group_config is not None


def test_each_ingress_replica_counts_its_share_of_the_engine_slots() -> None:
    [served] = rayservice(None, ingress_replicas=3).settings.models
    # 16 slots over 3 ingress replicas: 6 each (rounded up), not 16 each
    assert (served.capacity, served.max_waiting) == (6, 11)


def test_a_colocated_pool_is_the_routers_decode_pool() -> None:
    resolved = ModelDeploymentSpec.model_validate(RAYSERVICE).model.resolve()
    model = ResolvedModel("tiny", Path("/models/tiny"), resolved.max_context, resolved.thinking_default)
    topology = plan(app.topology_spec(model, ServeConfig(replicas=2), "cpu", ROUTER, avoid_node="head"))
    [(role, engine)] = topology.engines.items()
    assert (role, engine.name_prefix, dict(engine.bind_kwargs)["router"].role) == ("decode", "Engine:", "decode")
    assert engine.llm_config.deployment_config["num_replicas"] == 2
    [served] = topology.settings.models
    assert (served.capacity, served.max_waiting) == (2 * 64, 2 * 64)
    assert topology.ingress_options["ray_actor_options"]["label_selector"] == {app.NODE_ID_LABEL: "!head"}


def test_engines_and_ingress_drain_for_the_configured_time_and_start_where_asked() -> None:
    """Serve's 20 s default would cut a removed replica's long streams off."""
    decode = PoolConfig(replicas=1, initial_replicas=2, max_replicas=2)
    # Serve's own policy: glmserve's keeps its own delays (Serve's are 0 then).
    topology = local(ROUTER, drain_timeout_s=300, decode=decode, autoscaling_policy="serve")
    for engine in topology.engines.values():
        config = engine.llm_config.deployment_config
        assert config["graceful_shutdown_timeout_s"] == 300
        assert config["graceful_shutdown_wait_loop_s"] == 1.0
    # The ingress relays those streams: it drains as long.
    assert topology.ingress_options["graceful_shutdown_timeout_s"] == 300
    assert topology.ingress_options["graceful_shutdown_wait_loop_s"] == 1.0
    scaling = topology.engines["decode"].llm_config.deployment_config["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["initial_replicas"], scaling["max_replicas"]) == (1, 2, 2)
    assert "downscale_delay_s" not in scaling  # Serve's default unless set
