"""The CPU path of a ModelDeployment, verified as configuration: a pool on a CPU node group whose
replica is data-parallel with expert parallelism (DP2 + EP2) is a gang of two Serve replicas, one
rank each, on two nodes of the group, running vLLM's CPU backend."""

from __future__ import annotations

from dataclasses import replace

import pytest

from glmserve.common.deployment import ModelDeploymentSpec
from glmserve.common.deployment_plan import PlanStatus, plan_for
from glmserve.common.nodegroup import NodeGroupSpec
from glmserve.common.placement import node_group_resource, pool_resource
from glmserve.operator.build.rayservice import build_rayservice
from glmserve.serving.engine.server import DataParallelEngineServer
from glmserve.serving.entrypoint import engine_class, pool_llm_config
from tests.operator.conftest import cluster_tiny_inputs

# Ray Serve LLM starts Ray implicitly: every test here runs inside one private cluster.
pytestmark = pytest.mark.usefixtures("own_ray")


def _dp_ep_plan() -> tuple[ModelDeploymentSpec, PlanStatus, dict[str, NodeGroupSpec]]:
    groups = {
        "cpu": NodeGroupSpec.model_validate(
            {"cpu": {"cores": 1, "memoryGiB": 3}, "maxNodes": 3, "provisioner": "static"}
        )
    }
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"name": "glm-4.6-tiny", "source": "pvc://glmserve-models/glm-4.6-tiny"},
            "prefill": {"nodeGroup": "cpu"},
            "decode": {"nodeGroup": "cpu", "parallelism": {"tensor": 1, "data": 2, "expert": 2}},
            "mtp": {"enabled": False},
        }
    )
    plan = plan_for(spec, groups)
    assert plan.feasible, plan.shortfalls
    return spec, PlanStatus.of(plan, groups), groups


def test_a_dp2_ep2_cpu_replica_is_a_gang_of_one_rank_per_node() -> None:
    spec, plan, _ = _dp_ep_plan()
    layout = plan.decode
    assert (layout.gpus_per_replica, layout.nodes_per_replica) == (2, 2)
    assert engine_class(layout) is DataParallelEngineServer
    config = pool_llm_config(spec, "decode", layout)
    kwargs = config.engine_kwargs
    assert (kwargs["data_parallel_size"], kwargs["tensor_parallel_size"], kwargs["enable_expert_parallel"]) == (
        2,
        1,
        True,
    )
    assert "enable_eplb" not in kwargs  # vLLM refuses EPLB off CUDA/ROCm/XPU
    options = DataParallelEngineServer.get_deployment_options(config)
    assert options["gang_scheduling_config"].gang_size == 2
    # Each rank's placement group: one bundle of the rank's cores on a node of the pool's group.
    [bundle] = options["placement_group_bundles"]
    assert {k: v for k, v in bundle.items() if v} == {
        "CPU": 1.0,
        node_group_resource("cpu"): 1.0,
        pool_resource("decode"): 1.0,
    }


def test_the_dp2_ep2_pool_gets_a_pod_per_rank() -> None:
    spec, plan, groups = _dp_ep_plan()
    inputs = replace(cluster_tiny_inputs(), spec=spec, plan=plan, groups=groups)
    workers = {
        g["groupName"]: g for g in build_rayservice(inputs, None)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    }
    assert (workers["decode"]["replicas"], workers["prefill"]["replicas"]) == (2, 1)
    assert workers["decode"]["resources"] == {node_group_resource("cpu"): "1", pool_resource("decode"): "1"}
