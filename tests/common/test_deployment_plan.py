"""The capacity plan of a ModelDeployment on CPU node groups: vLLM's CPU backend, one engine
rank per slot of cpu.cores / enginesPerNode cores, a KV cache of the group's fixed size."""

from __future__ import annotations

from typing import Any

import pytest

from glmserve.common.deployment import ModelDeploymentSpec
from glmserve.common.deployment_plan import PlanStatus, plan_for, pool_targets
from glmserve.common.errors import ConfigError
from glmserve.common.nodegroup import GIB, NodeGroupSpec

SOURCE = "pvc://glmserve-models/glm-4.6-tiny"


def _group(**cpu: Any) -> NodeGroupSpec:
    max_nodes = cpu.pop("maxNodes", 2)
    spec = {"cpu": {"cores": 2, "memoryGiB": 3, **cpu}, "maxNodes": max_nodes, "provisioner": "static"}
    return NodeGroupSpec.model_validate(spec)


def _tiny(**pools: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {
            "model": {"name": "glm-4.6-tiny", "source": SOURCE},
            "prefill": {"nodeGroup": "cpu", "replicas": 1, **pools.get("prefill", {})},
            "decode": {"nodeGroup": "cpu", "replicas": 1, **pools.get("decode", {})},
            "mtp": {"enabled": False},
        }
    )


def test_a_cpu_pool_is_one_engine_per_replica_with_the_groups_cores_and_kv_cache() -> None:
    groups = {"cpu": _group(kvCacheGiB=0.25)}
    plan = plan_for(_tiny(), groups)
    assert plan.feasible, plan.shortfalls
    decode = PlanStatus.of(plan, groups).decode
    assert (decode.gpu, decode.gpus_per_node, decode.gpus_per_replica, decode.nodes_per_replica) == ("CPU", 1, 1, 1)
    assert decode.parallelism.layout().describe() == "tensor 1 x data 1, expert 1"
    assert decode.cpu is not None and (decode.cpu.cores, decode.cpu.kv_cache_gib) == (2, 0.25)
    # The KV cache is the group's size, not what is left of the memory; usable is 90% of the pod's 3 GiB.
    assert decode.memory_per_gpu_gb.kv_cache == round(0.25 * GIB / 1e9, 2)
    assert decode.memory_per_gpu_gb.usable == round(0.9 * 3 * GIB / 1e9, 2)


def test_engines_share_a_node_by_slots_like_gpus() -> None:
    groups = {"cpu": _group(cores=4, memoryGiB=6, enginesPerNode=2, maxNodes=1)}
    status = PlanStatus.of(plan_for(_tiny(), groups), groups)
    for pool in status.pools().values():
        assert pool.gpus_per_node == 2 and pool.cpu is not None and pool.cpu.cores == 2
        assert pool.memory_per_gpu_gb.usable == round(0.9 * 3 * GIB / 1e9, 2)  # half the node each
    # Both pools' one engine each fit the group's single node of two engine slots.
    assert status.prefill.nodes(1) + status.decode.nodes(1) == 2 * status.prefill.nodes(1)


def test_too_few_cpu_nodes_is_a_shortfall_of_the_group() -> None:
    plan = plan_for(_tiny(decode={"replicas": 2}), {"cpu": _group(maxNodes=2)})
    assert plan.shortfalls == (
        "node group cpu allows at most 2 node(s) of 1 CPU engine slots but prefill 1 x 1 engine slots (1 node(s))"
        " + decode 2 x 1 engine slots (2 node(s)) need 3 node(s): short by 1 node(s) (1 CPU engine slots)",
    )


def test_a_pod_too_small_for_an_engine_does_not_fit() -> None:
    plan = plan_for(_tiny(), {"cpu": _group(memoryGiB=1)})
    assert not plan.feasible
    assert (
        "prefill: glm-4.6-tiny (bf16) at 8192 tokens x 8 sequences does not fit tensor 1 x data 1" in plan.shortfalls[0]
    )


def test_a_kv_cache_shorter_than_one_sequence_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"NodeGroup cpu: cpu.kvCacheGiB holds 524 tokens .* model.maxContext 8192"):
        plan_for(_tiny(), {"cpu": _group(kvCacheGiB=0.001)})


def test_a_set_parallelism_is_kept_on_cpu_groups() -> None:
    groups = {"cpu": _group(cores=1, maxNodes=3)}
    parallel = {"parallelism": {"tensor": 1, "data": 2, "expert": 2}}
    status = PlanStatus.of(plan_for(_tiny(decode=parallel), groups), groups)
    assert (status.decode.gpus_per_replica, status.decode.nodes_per_replica) == (2, 2)


def test_autoscaled_pools_take_unset_targets_from_the_plan() -> None:
    """A decode replica runs the maxConcurrency sequences its KV cache was sized for; a CPU group has
    no compute figure, so prefill scales on its TTFT alone unless its rate is set; a pool may start at 0."""
    groups = {"cpu": _group(kvCacheGiB=0.25)}
    spec = _tiny(
        prefill={"replicas": None, "autoscaling": {"minReplicas": 0, "maxReplicas": 2}},
        decode={"replicas": None, "maxConcurrency": 6, "autoscaling": {"maxReplicas": 2, "downscaleDelaySeconds": 60}},
    )
    plan = PlanStatus.of(plan_for(spec, groups), groups)
    assert plan.prefill.min_replicas == 0 and plan.prefill.nodes(0) == 0
    prefill = pool_targets(spec, "prefill", plan.prefill)
    decode = pool_targets(spec, "decode", plan.decode)
    assert prefill is not None and decode is not None
    assert (prefill.role, prefill.min_replicas, prefill.prefill_tokens_per_s) == ("prefill", 0, None)
    assert (decode.running_per_replica, decode.downscale_delay_s, decode.itl_slo_s) == (6, 60, 0.05)
    assert pool_targets(_tiny(), "decode", plan.decode) is None
