"""The router: a Deployment + Service (gRPC) per shard, and the ConfigMap with each shard's config
and the tenants.

The router admits every request against the plans and tenants (key hashes only) in the ConfigMap,
with its limits in `redis_url`; the ingress replicas on the Ray cluster mount the same tenants to
authenticate API keys and to admit on their own while no router answers. Both re-read the file
when it changes. The cache salt is the ingress's alone: the router gets each request's salt.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from glmserve.common.config import ROUTER_HASHING
from glmserve.common.tenancy import TenantsFile
from glmserve.operator.build.inputs import ROUTER_METRICS_PORT, ROUTER_PORT, DeploymentInputs, RouterShard
from glmserve.operator.build.meta import deployment_labels, metadata
from glmserve.operator.build.random_secrets import router_token_env
from glmserve.operator.build.tracing import tracing_env, tracing_volumes

CONFIG_DIR = "/etc/glmserve/router"
CONFIG_FILE = "config.yaml"
TENANTS_FILE = "tenants.yaml"
CONFIG_HASH = "glmserve.io/config-hash"


def config_file(shard: RouterShard) -> str:
    return CONFIG_FILE if shard.count == 1 else f"config-{shard.index}.yaml"


def router_config(
    redis_url: str | None, replicas: int, shard: RouterShard, from_zero: str | None = None
) -> dict[str, Any]:
    """`glmserve router serve --config`'s settings: its ports, the engines' block hashing,
    admission from the tenants file beside it (absent until a Plan applies: nobody is admitted)
    with limits in `redis_url` (None: each router replica limits alone, in memory), flow
    control's share: each of the shard's `replicas` hands out its part of its engines' slots (the
    shards own different engines), and the shard (left out unsharded, so that config is unchanged).
    `from_zero`: the served model whose decode pool may have no replica (`minReplicas: 0`): its
    requests wait in the queue for one to start instead of being refused."""
    admission = {"tenants_file": f"{CONFIG_DIR}/{TENANTS_FILE}", "redis_url": redis_url}
    flow: dict[str, Any] = {"replicas": replicas}
    if from_zero is not None:
        flow["scale_from_zero"] = [from_zero]
    config: dict[str, Any] = {
        "port": ROUTER_PORT,
        "metrics_port": ROUTER_METRICS_PORT,
        "hashing": ROUTER_HASHING,
        "admission": admission,
        "flow": flow,
    }
    if shard.count > 1:
        config["shard"] = {"count": shard.count, "index": shard.index}
    return config


def build_router_configmap(
    inputs: DeploymentInputs, tenancy: TenantsFile | None, redis_url: str | None
) -> dict[str, Any]:
    """`tenancy` None (no Plan applies yet): no tenants file, so neither router nor ingress admits anybody."""
    spec = inputs.spec
    from_zero = (spec.model.served_name or spec.model.name) if spec.decode.min_replicas == 0 else None
    data = {
        config_file(shard): yaml.safe_dump(
            router_config(redis_url, spec.router.replicas, shard, from_zero), sort_keys=False
        )
        for shard in inputs.router_shards
    }
    if tenancy is not None:
        dumped = tenancy.model_dump(mode="json", by_alias=True, exclude_none=True)
        data[TENANTS_FILE] = yaml.safe_dump(dumped, sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            inputs.router_service, inputs.owner, deployment_labels(inputs.name, "router"), inputs.namespace
        ),
        "data": data,
    }


def config_hash(configmap: dict[str, Any], shard: RouterShard) -> str:
    """Stamped on the shard's pod template, so a new config rolls its pods (new tenants do not)."""
    return hashlib.sha256(configmap["data"][config_file(shard)].encode()).hexdigest()[:16]


def build_router_deployments(inputs: DeploymentInputs, configmap: dict[str, Any]) -> list[dict[str, Any]]:
    return [build_router_deployment(inputs, shard, config_hash(configmap, shard)) for shard in inputs.router_shards]


def build_router_deployment(inputs: DeploymentInputs, shard: RouterShard, config_digest: str) -> dict[str, Any]:
    labels = shard.labels()
    probe = {"grpc": {"port": ROUTER_PORT}, "periodSeconds": 10}
    container: dict[str, Any] = {
        "name": "router",
        "image": inputs.images.router,
        "command": ["glmserve"],
        "args": ["router", "serve", "--config", f"{CONFIG_DIR}/{config_file(shard)}"],
        "ports": [
            {"name": "grpc", "containerPort": ROUTER_PORT},
            {"name": "metrics", "containerPort": ROUTER_METRICS_PORT},
        ],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 6},
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
    }
    tracing = inputs.spec.observability.tracing
    container["env"] = [router_token_env(inputs), *tracing_env(tracing)]
    extra = tracing_volumes(tracing)
    container["volumeMounts"] += [mount for _, mount in extra]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(shard.name, inputs.owner, labels, inputs.namespace),
        "spec": {
            "replicas": inputs.spec.router.replicas,
            "selector": {"matchLabels": shard.selector()},
            "template": {
                "metadata": {"labels": labels, "annotations": {CONFIG_HASH: config_digest}},
                "spec": {
                    **inputs.images.pod_spec(),
                    "containers": [container],
                    "volumes": [
                        # every key: the tenants file appears when a Plan applies and is updated in place
                        {"name": "config", "configMap": {"name": inputs.router_service}},
                        *(volume for volume, _ in extra),
                    ],
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": shard.selector()},
                        }
                    ],
                },
            },
        },
    }
