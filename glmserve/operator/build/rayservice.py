"""A ModelDeployment -> a KubeRay `RayService`: head, ingress group, prefill and decode worker groups."""

from __future__ import annotations

from typing import Any

import yaml

from glmserve.common.deployment import GcsFaultTolerance
from glmserve.common.deployment_plan import PoolLayoutStatus
from glmserve.common.placement import node_group_resource, pool_resource
from glmserve.operator.build.inputs import DeploymentInputs
from glmserve.operator.build.meta import deployment_labels, metadata
from glmserve.operator.build.raypods import head_template, ingress_template, worker_template
from glmserve.operator.build.serveconfig import build_serve_config

# KubeRay's in-tree autoscaler (v2: it sees each group's pending Serve replicas as resource
# demand) removes a worker pod idle this long. Serve removes a replica only after the policy's
# downscale delay, so the pod is really unused by then; a minute more lets a quick return of the
# load reuse the pod (its image pulled, its node up) instead of waiting for a new one.
AUTOSCALER_IDLE_TIMEOUT_S = 60
AUTOSCALER_OPTIONS = {"version": "v2", "upscalingMode": "Default", "idleTimeoutSeconds": AUTOSCALER_IDLE_TIMEOUT_S}
# A CPU engine's ranks talk over NIXL and Serve's RPCs, not Ray's object store: keep it small.
CPU_OBJECT_STORE_BYTES = 256 * 2**20


def _pool_group(inputs: DeploymentInputs, role: str, layout: PoolLayoutStatus) -> dict[str, Any]:
    # One worker pod per node.
    low, high = layout.nodes(layout.min_replicas), layout.nodes(layout.max_replicas)
    per_node = str(layout.gpus_per_node)
    cpu = inputs.groups[layout.node_group].cpu
    start = (
        {"num-cpus": str(cpu.cores), "num-gpus": "0", "object-store-memory": str(CPU_OBJECT_STORE_BYTES)} if cpu else {}
    )
    return {
        "groupName": role,
        "replicas": low,
        "minReplicas": low,
        "maxReplicas": high,
        "rayStartParams": start,
        "resources": {node_group_resource(layout.node_group): per_node, pool_resource(role): per_node},
        "labels": {"glmserve.io/node-group": layout.node_group, "glmserve.io/pool": role},
        "template": worker_template(inputs, role, layout),
    }


def _ingress_group(inputs: DeploymentInputs, redis_url: str | None) -> dict[str, Any]:
    replicas = inputs.spec.ingress.replicas
    return {
        "groupName": "ingress",
        "replicas": replicas,
        "minReplicas": replicas,
        "maxReplicas": replicas,
        # No GPUs here: the ingress replicas, one per pod, are placed by this resource.
        "rayStartParams": {"num-gpus": "0"},
        "resources": {pool_resource("ingress"): "1"},
        "template": ingress_template(inputs, redis_url),
    }


def _gcs_fault_tolerance(ft: GcsFaultTolerance) -> dict[str, Any]:
    options: dict[str, Any] = {"redisAddress": ft.redis_address}
    if ft.password_secret:
        options["redisPassword"] = {"valueFrom": {"secretKeyRef": ft.password_secret.wire()}}
    return options


def build_rayservice(inputs: DeploymentInputs, redis_url: str | None) -> dict[str, Any]:
    """`redis_url`: the rate limits' shared store (None: each ingress replica limits alone)."""
    pools = inputs.plan.pools()
    autoscaling = any(layout.min_replicas != layout.max_replicas for layout in pools.values())
    cluster: dict[str, Any] = {
        "rayVersion": inputs.ray_version,
        "enableInTreeAutoscaling": autoscaling,
        # KubeRay puts RAY_AUTH_MODE=token and the Secret's token into every Ray container.
        "authOptions": {"mode": "token", "secretName": inputs.ray_auth_secret},
        # The head schedules nothing (num-cpus 0): a busy head slows the GCS every worker depends on.
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0", "num-gpus": "0"},
            "template": head_template(inputs),
        },
        "workerGroupSpecs": [
            _ingress_group(inputs, redis_url),
            *(_pool_group(inputs, role, layout) for role, layout in pools.items()),
        ],
    }
    if autoscaling:
        # Pods are added for Serve replicas that fit nowhere, within each group's min/maxReplicas.
        cluster["autoscalerOptions"] = dict(AUTOSCALER_OPTIONS)
    if ft := inputs.spec.gcs_fault_tolerance:
        cluster["gcsFaultToleranceOptions"] = _gcs_fault_tolerance(ft)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": metadata(inputs.name, inputs.owner, deployment_labels(inputs.name, "ray"), inputs.namespace),
        "spec": {
            "serveConfigV2": yaml.safe_dump(build_serve_config(inputs), sort_keys=False),
            "upgradeStrategy": {"type": "NewCluster"},
            "rayClusterConfig": cluster,
        },
    }
