"""The router: a Deployment + Service (gRPC) and the ConfigMap with its plans and tenants."""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from glmserve.common.tenancy import TenantsFile
from glmserve.operator.build.inputs import ROUTER_METRICS_PORT, ROUTER_PORT, DeploymentInputs
from glmserve.operator.build.meta import deployment_labels, metadata, selector

CONFIG_DIR = "/etc/glmserve/router"
CONFIG_FILE = "config.yaml"
CONFIG_HASH = "glmserve.io/config-hash"


def build_router_configmap(inputs: DeploymentInputs, config: TenantsFile) -> dict[str, Any]:
    text = yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            inputs.router_service, inputs.owner, deployment_labels(inputs.name, "router"), inputs.namespace
        ),
        "data": {CONFIG_FILE: text},
    }


def config_hash(configmap: dict[str, Any]) -> str:
    """Stamped on the router's pod template, so a new config rolls the pods."""
    return hashlib.sha256(configmap["data"][CONFIG_FILE].encode()).hexdigest()[:16]


def build_router_deployment(inputs: DeploymentInputs, config_digest: str, redis_url: str | None) -> dict[str, Any]:
    labels = deployment_labels(inputs.name, "router")
    probe = {"grpc": {"port": ROUTER_PORT}, "periodSeconds": 10}
    container: dict[str, Any] = {
        "name": "router",
        "image": inputs.container_image,
        "command": ["glmserve"],
        "args": ["router", "serve", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
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
    if redis_url:
        container["env"] = [{"name": "GLMSERVE_REDIS_URL", "value": redis_url}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(inputs.router_service, inputs.owner, labels, inputs.namespace),
        "spec": {
            "replicas": inputs.spec.router.replicas,
            "selector": {"matchLabels": selector(inputs.name, "router")},
            "template": {
                "metadata": {"labels": labels, "annotations": {CONFIG_HASH: config_digest}},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "config", "configMap": {"name": inputs.router_service}}],
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": selector(inputs.name, "router")},
                        }
                    ],
                },
            },
        },
    }
