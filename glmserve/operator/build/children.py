"""Every object a ModelDeployment owns, in the order they are applied."""

from __future__ import annotations

from typing import Any

from glmserve.common.tenancy import TenantsFile
from glmserve.operator.build.inputs import DeploymentInputs
from glmserve.operator.build.monitoring import build_pod_monitor, build_prometheus_rule, build_service_monitors
from glmserve.operator.build.netpol import build_router_network_policy
from glmserve.operator.build.pdb import build_pdbs
from glmserve.operator.build.rayservice import build_rayservice
from glmserve.operator.build.router import build_router_configmap, build_router_deployment, config_hash
from glmserve.operator.build.services import build_ingress_service, build_router_service

MONITORING_KINDS = frozenset({"ServiceMonitor", "PodMonitor", "PrometheusRule"})


def build_children(
    inputs: DeploymentInputs, tenancy: TenantsFile | None, redis_url: str | None
) -> list[dict[str, Any]]:
    """The router's ConfigMap comes first so no pod starts without it (`tenancy` None: no Plan yet)."""
    configmap = build_router_configmap(inputs, tenancy, redis_url)
    return [
        configmap,
        build_router_deployment(inputs, config_hash(configmap)),
        build_router_service(inputs),
        build_router_network_policy(inputs),
        build_rayservice(inputs, redis_url),
        build_ingress_service(inputs),
        *build_pdbs(inputs),
        *build_service_monitors(inputs),
        build_pod_monitor(inputs),
        build_prometheus_rule(inputs),
    ]
