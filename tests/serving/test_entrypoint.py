"""The GPU path, verified as configuration: what each pool's vLLM engine gets on H100/H200,
from the planner's layout (no GPU or GPU build of vLLM exists in CI)."""

from __future__ import annotations

import pytest

from glmserve.common.config import STREAM_INTERVAL_MS
from glmserve.common.deployment import ModelDeploymentSpec
from glmserve.common.deployment_plan import PlanStatus, ServeAppArgs, plan_for
from glmserve.common.nodegroup import NodeGroupSpec
from glmserve.common.placement import node_group_resource, pool_resource
from glmserve.serving.engine.server import DataParallelEngineServer, EngineServer
from glmserve.serving.entrypoint import app_builder, engine_class, model_source, pool_llm_config

# Ray Serve LLM starts Ray implicitly: every test here runs inside one private cluster.
pytestmark = pytest.mark.usefixtures("own_ray")


def _groups(gpu: str, max_nodes: int = 16) -> dict[str, NodeGroupSpec]:
    spec = {"gpu": gpu, "gpusPerNode": 8, "maxNodes": max_nodes, "provisioner": "static"}
    return {"gpus": NodeGroupSpec.model_validate(spec)}


def _deployment(precision: str, context: int, *, mtp: bool = True) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {
            "model": {"name": "glm-4.6", "precision": precision, "maxContext": context},
            "prefill": {"nodeGroup": "gpus", "replicas": 1},
            "decode": {"nodeGroup": "gpus", "autoscaling": {"minReplicas": 1, "maxReplicas": 2}},
            "mtp": {"enabled": mtp, "numSpeculativeTokens": 1},
        }
    )


def _planned(gpu: str, precision: str, context: int) -> tuple[ModelDeploymentSpec, PlanStatus]:
    spec = _deployment(precision, context)
    groups = _groups(gpu)
    plan = plan_for(spec, groups)
    assert plan.feasible, plan.shortfalls
    return spec, PlanStatus.of(plan, groups)


# (GPU, precision, context) -> GPUs per replica, as in Zhipu's table (docs/reference/glm-4.6.md).
TABLE = [
    ("H100", "fp8", 32768, 8),
    ("H200", "fp8", 32768, 4),
    ("H100", "bf16", 32768, 16),
    ("H200", "bf16", 32768, 8),
    ("H200", "fp8", 131072, 8),
    ("H100", "bf16", 131072, 32),
]


@pytest.mark.parametrize(("gpu", "precision", "context", "gpus"), TABLE)
def test_engine_arguments_follow_the_planned_layout(gpu: str, precision: str, context: int, gpus: int) -> None:
    spec, plan = _planned(gpu, precision, context)
    for role in ("prefill", "decode"):
        layout = plan.pools()[role]
        config = pool_llm_config(spec, role, layout)
        assert config.experimental_configs["stream_batching_interval_ms"] == STREAM_INTERVAL_MS
        kw = config.engine_kwargs
        par = layout.parallelism
        assert layout.gpus_per_replica == gpus
        assert kw["tensor_parallel_size"] * kw["data_parallel_size"] == gpus
        assert (kw["tensor_parallel_size"], kw["data_parallel_size"]) == (par.tensor, par.data)
        assert kw["max_model_len"] == context
        assert kw["gpu_memory_utilization"] == 0.90
        consumer = {"kv_role": "kv_consumer", "kv_load_failure_policy": "recompute"}  # a failed pull recomputes
        assert kw["kv_transfer_config"] == {
            "kv_connector": "NixlConnector",
            **({"kv_role": "kv_producer"} if role == "prefill" else consumer),
        }
        # A prefill engine's shutdown waits for the KV pulls it owes, within the replica's drain.
        assert kw.get("shutdown_timeout") == (600 if role == "prefill" else None)
        assert kw["speculative_config"] == {"method": "mtp", "num_speculative_tokens": 1}
        assert kw["tool_call_parser"] == kw["reasoning_parser"] == "glm45"
        assert kw["default_chat_template_kwargs"] == {"enable_thinking": True}
        assert config.accelerator_type == gpu
        expected_source = "zai-org/GLM-4.6-FP8" if precision == "fp8" else "zai-org/GLM-4.6"
        assert config.model_loading_config.model_source == expected_source
        if par.expert > 1:
            # Expert parallelism over every rank, EPLB with redundant slots that split evenly.
            assert kw["enable_expert_parallel"] and kw["enable_eplb"]
            redundant = kw["eplb_config"]["num_redundant_experts"]
            assert redundant >= par.expert and (160 + redundant) % par.expert == 0
        else:
            assert "enable_expert_parallel" not in kw


def test_multi_node_replica_is_a_gang_of_data_parallel_ranks() -> None:
    spec, plan = _planned("H100", "bf16", 131072)
    layout = plan.decode
    assert (layout.parallelism.tensor, layout.parallelism.data, layout.nodes_per_replica) == (8, 4, 4)
    assert engine_class(layout) is DataParallelEngineServer
    config = pool_llm_config(spec, "decode", layout)
    options = DataParallelEngineServer.get_deployment_options(config)
    # One Serve replica per data-parallel rank, restarted together; replicas = DP groups x DP size.
    assert options["gang_scheduling_config"].gang_size == 4
    assert options["autoscaling_config"]["max_replicas"] == 2 * 4
    bundles = options["placement_group_bundles"]
    assert len([b for b in bundles if b.get("GPU")]) == 8
    assert all(b[node_group_resource("gpus")] == 1 for b in bundles if b.get("GPU"))


def test_single_node_replica_packs_its_ranks_on_its_node_group() -> None:
    spec, plan = _planned("H200", "fp8", 32768)
    layout = plan.prefill
    assert engine_class(layout) is EngineServer
    options = EngineServer.get_deployment_options(pool_llm_config(spec, "prefill", layout))
    assert options["placement_group_strategy"] == "STRICT_PACK"
    gpu_bundles = [b for b in options["placement_group_bundles"] if b.get("GPU")]
    assert len(gpu_bundles) == 4
    for bundle in gpu_bundles:
        assert bundle[node_group_resource("gpus")] == 1 and bundle[pool_resource("prefill")] == 1
        assert bundle["accelerator_type:H200"] > 0


def test_kv_cache_precision_and_mtp_switches() -> None:
    spec = _deployment("fp8", 32768, mtp=False).model_copy(
        update={"model": _deployment("fp8", 32768).model.model_copy(update={"kv_cache_precision": "fp8"})}
    )
    groups = _groups("H200")
    plan = PlanStatus.of(plan_for(spec, groups), groups)
    kw = pool_llm_config(spec, "decode", plan.decode).engine_kwargs
    assert kw["kv_cache_dtype"] == "fp8" and "speculative_config" not in kw


def test_serve_app_args_round_trip_and_unsupported_sources() -> None:
    spec, plan = _planned("H200", "fp8", 32768)
    wire = ServeAppArgs(deployment=spec, planner=plan).wire()
    assert ServeAppArgs.model_validate(wire).planner == plan
    assert model_source("s3://bucket/glm") == "s3://bucket/glm"
    assert model_source("pvc://weights/glm-4.6") == "/mnt/models/weights/glm-4.6"
    with pytest.raises(Exception, match="use hf://, s3://, gs:// or pvc://"):
        model_source("https://example.com/glm-4.6")


def test_with_the_operators_router_engines_register_and_the_ingress_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    spec, plan = _planned("H200", "fp8", 32768)
    wire = ServeAppArgs(deployment=spec, planner=plan).wire()
    routed = "glm-router.ns.svc:50051"
    monkeypatch.setenv("GLMSERVE_ROUTER_ADDRESS", routed)
    app = app_builder(wire)
    assert app._bound_deployment.init_kwargs["settings"].router_address == routed
    for role, pool in app._bound_deployment.init_kwargs["engines"]["glm-4.6"].items():
        link = pool._bound_deployment.init_kwargs["router"]
        assert (link.routers, link.role, link.model) == ((routed,), role, "glm-4.6")
        router_class = pool._bound_deployment._deployment_config.request_router_config.request_router_class
        assert router_class.endswith("PinnedRouter")
    monkeypatch.delenv("GLMSERVE_ROUTER_ADDRESS")
    unrouted = app_builder(wire)._bound_deployment.init_kwargs
    assert unrouted["settings"].router_address is None
    assert unrouted["settings"].request_limits.max_body_bytes == spec.ingress.max_body_mib << 20
    assert all(p._bound_deployment.init_kwargs["router"] is None for p in unrouted["engines"]["glm-4.6"].values())


def test_the_deployments_ingress_settings_reach_the_ingress() -> None:
    spec, plan = _planned("H200", "fp8", 32768)
    spec = spec.model_copy(update={"ingress": spec.ingress.model_copy(update={"migration_limit": 0})})
    settings = app_builder(ServeAppArgs(deployment=spec, planner=plan).wire())._bound_deployment.init_kwargs["settings"]
    assert (settings.migration.limit, settings.migration.stall_timeout_s) == (0, 60)


# Ray returns a reply of at most this many bytes inline (max_direct_call_object_size); a larger
# one goes through the object store.
RAY_INLINE_REPLY_BYTES = 100 * 1024


@pytest.mark.parametrize("routed", [True, False])
def test_each_replica_recovers_with_a_reply_ray_returns_inline(monkeypatch: pytest.MonkeyPatch, routed: bool) -> None:
    """A restarted Serve controller recovers a replica from its reply to `initialize_and_get_metadata`,
    which carries the deployment's config. Above Ray's inline size that reply goes through the object
    store, which after a head loss could not reach the new head in time: the controller replaced the
    ingress replica (docs/node-loss.md)."""
    from ray import cloudpickle
    from ray.serve._private.version import DeploymentVersion

    spec, plan = _planned("H200", "fp8", 32768)
    if routed:
        monkeypatch.setenv("GLMSERVE_ROUTER_ADDRESS", "glm-router.ns.svc:50051")
    app = app_builder(ServeAppArgs(deployment=spec, planner=plan).wire())
    ingress = app._bound_deployment
    deployments = [ingress, *(p._bound_deployment for p in ingress.init_kwargs["engines"]["glm-4.6"].values())]
    for deployment in deployments:
        config = deployment._deployment_config
        version = DeploymentVersion("v", config, deployment._replica_config.ray_actor_options)
        size = len(cloudpickle.dumps((config, version)))
        assert size < RAY_INLINE_REPLY_BYTES / 4, f"{deployment.name}: {size} B"
