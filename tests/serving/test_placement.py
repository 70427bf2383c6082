"""Placement on a simulated multi-node Ray cluster: raylets with fake GPUs and node-group
resources, Serve deployments with the production deployment options, stand-in actors per
rank instead of engines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster
from ray.llm._internal.serve.serving_patterns.data_parallel.dp_server import DPServer
from ray.llm._internal.serve.utils.pg_utils import get_bundle_indices_sorted_by_node
from ray.util.placement_group import get_current_placement_group, get_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from glmserve.common.capacity import Layout
from glmserve.common.deployment_plan import PoolLayoutStatus
from glmserve.common.errors import ConfigError
from glmserve.common.placement import node_group_resource, pool_placement, pool_resource
from glmserve.serving.engine.server import DataParallelEngineServer, EngineServer
from glmserve.serving.placement import check_fits, cluster_nodes
from tests.serving.test_entrypoint import _deployment

pytestmark = pytest.mark.slow

GROUPS = {"h100": ("H100", "prefill"), "h200": ("H200", "decode")}


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """Two 8-GPU nodes per node group; returns node id -> node group."""
    sim = Cluster(initialize_head=True, head_node_args={"num_cpus": 6, "num_gpus": 0})
    where: dict[str, str] = {}
    for group, (gpu, role) in GROUPS.items():
        for _ in range(2):
            node = sim.add_node(
                num_cpus=10,
                num_gpus=8,
                resources={node_group_resource(group): 8, pool_resource(role): 8, f"accelerator_type:{gpu}": 1},
            )
            where[node.node_id] = group
    ray.init(address=sim.address)
    try:
        yield where
    finally:
        serve.shutdown()
        ray.shutdown()
        sim.shutdown()


@ray.remote(num_cpus=0.1, num_gpus=1)
class Rank:
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=0)
class Registry:
    def __init__(self) -> None:
        self.replicas: list[list[str]] = []

    def add(self, nodes: list[str]) -> None:
        self.replicas.append(nodes)

    def all(self) -> list[list[str]]:
        return self.replicas


class StandIn:
    """Takes an engine's place in its placement group: one actor per GPU bundle, as vLLM's
    Ray executor starts its workers, each reporting the node it landed on."""

    def __init__(self, llm_config: Any, registry: str, **_: Any) -> None:
        gang = serve.get_replica_context().gang_context
        if gang is None:
            pg = get_current_placement_group()
            gpu_bundles = [i for i, b in enumerate(pg.bundle_specs) if b.get("GPU")]
        else:
            # A data-parallel rank takes its share of the gang's bundles the way DPServer tells
            # vLLM to (VLLM_RAY_BUNDLE_INDICES): bundles sorted by node, sliced by rank.
            pg = get_placement_group(gang.pg_name)
            per_rank = len(llm_config.get_engine_config().placement_bundles)
            ordered = get_bundle_indices_sorted_by_node(pg, driver_node_id=None)
            gpu_bundles = [int(i) for i in DPServer._compute_bundle_indices(gang.rank, per_rank, ordered).split(",")]
        ranks = [
            Rank.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
            ).remote()
            for i in gpu_bundles
        ]
        ray.get(ray.get_actor(registry).add.remote(ray.get([r.node.remote() for r in ranks])))

    def ping(self) -> str:
        return "ok"


def _layout(role: str, layout: Layout, group: str, replicas: int) -> PoolLayoutStatus:
    gpu = GROUPS[group][0]
    return PoolLayoutStatus.model_validate(
        {
            "nodeGroup": group, "gpu": gpu, "gpusPerNode": 8, "gpusPerReplica": layout.gpus,
            "nodesPerReplica": max(1, layout.gpus // 8),
            "parallelism": {"tensor": layout.tensor, "data": layout.data, "expert": layout.expert},
            "minReplicas": replicas, "maxReplicas": replicas,
            "memoryPerGpuGB": {"usable": 1, "weights": 1, "kvCache": 1, "activations": 1, "runtime": 1},
        }
    )  # fmt: skip


def _deploy(role: str, layout: PoolLayoutStatus, engine: type, registry: str) -> list[list[str]]:
    from glmserve.serving.entrypoint import pool_llm_config

    spec = _deployment("fp8", 32768).model_copy(
        update={role: _deployment("fp8", 32768).pools()[role].model_copy(update={"replicas": layout.min_replicas})}
    )
    config = pool_llm_config(spec, role, layout)
    options = engine.get_deployment_options(config)
    options["ray_actor_options"] = {"num_cpus": 0}  # as engines: the replica actor only relays
    reg = Registry.options(name=registry).remote()
    app = serve.deployment(StandIn, name=f"{role}-{registry}", **options).bind(config, registry)
    serve.run(app, name=registry, route_prefix=None)
    nodes = ray.get(reg.all.remote())
    serve.delete(registry)
    return nodes


def test_single_node_replicas_pack_onto_their_own_group(cluster: dict[str, str]) -> None:
    prefill = _deploy("prefill", _layout("prefill", Layout(4), "h100", replicas=2), EngineServer, "reg-a")
    assert len(prefill) == 2
    for ranks in prefill:
        assert len(ranks) == 4 and len(set(ranks)) == 1  # all tensor ranks on one node
        assert cluster[ranks[0]] == "h100"  # never on the decode group's nodes


def test_a_replica_wider_than_a_node_spreads_one_rank_group_per_node(cluster: dict[str, str]) -> None:
    ranks = _deploy("decode", _layout("decode", Layout(8, 2, 16), "h200", replicas=1), DataParallelEngineServer, "r-b")
    assert len(ranks) == 2  # one Serve replica per data-parallel rank
    assert all(len(r) == 8 and len(set(r)) == 1 for r in ranks)
    assert ranks[0][0] != ranks[1][0]  # the two rank groups on two nodes
    assert {cluster[r[0]] for r in ranks} == {"h200"}


def test_infeasible_layout_is_refused_before_anything_starts(cluster: dict[str, str]) -> None:
    nodes = cluster_nodes()
    fits = pool_placement("decode", "h200", Layout(8, 2, 16))
    check_fits([(fits, 1)], nodes)
    too_many = pool_placement("prefill", "h100", Layout(8))
    with pytest.raises(ConfigError, match=r"prefill: 1 of 3 rank groups of 8 GPUs find no room on node group 'h100'"):
        check_fits([(too_many, 3)], nodes)
    wrong_group = pool_placement("decode", "h300", Layout(2))
    with pytest.raises(ConfigError, match="node group 'h300' \\(0 node"):
        check_fits([(wrong_group, 1)], nodes)
    assert serve.status().applications == {}  # nothing was deployed for the refused layouts
