"""Every object a ModelDeployment owns, in the order they are applied."""

from __future__ import annotations

from typing import Any

from glmserve.common.tenancy import TenantsFile
from glmserve.operator.build.inputs import DeploymentInputs
from glmserve.operator.build.meta import COMPONENT_LABEL, DEPLOYMENT_LABEL
from glmserve.operator.build.monitoring import build_pod_monitor, build_prometheus_rule, build_service_monitors
from glmserve.operator.build.netpol import build_router_network_policy
from glmserve.operator.build.pdb import build_pdbs
from glmserve.operator.build.rayservice import build_rayservice
from glmserve.operator.build.router import build_router_configmap, build_router_deployments
from glmserve.operator.build.services import build_ingress_service, build_router_services

MONITORING_KINDS = frozenset({"ServiceMonitor", "PodMonitor", "PrometheusRule"})
# The kinds a router shard has one of: a change of shards leaves some that nothing renders.
SHARDED_KINDS = (("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget"))


def build_children(
    inputs: DeploymentInputs, tenancy: TenantsFile | None, redis_url: str | None
) -> list[dict[str, Any]]:
    """The router's ConfigMap comes first so no pod starts without it (`tenancy` None: no Plan yet)."""
    configmap = build_router_configmap(inputs, tenancy, redis_url)
    return [
        configmap,
        *build_router_deployments(inputs, configmap),
        *build_router_services(inputs),
        build_router_network_policy(inputs),
        build_rayservice(inputs, redis_url),
        build_ingress_service(inputs),
        *build_pdbs(inputs),
        *build_service_monitors(inputs),
        build_pod_monitor(inputs),
        build_prometheus_rule(inputs),
    ]


def router_selector(inputs: DeploymentInputs) -> str:
    """The label selector of every router object of the deployment, whatever its shards."""
    return f"{DEPLOYMENT_LABEL}={inputs.name},{COMPONENT_LABEL}=router"


def stale_router_objects(
    children: list[dict[str, Any]], live: list[dict[str, Any]], api_version: str, kind: str
) -> list[str]:
    """The names of the `live` router objects of one kind that `children` no longer holds: the
    shards a smaller count dropped, or the unsharded ones when shards begin (and back)."""
    rendered = {c["metadata"]["name"] for c in children if (c["apiVersion"], c["kind"]) == (api_version, kind)}
    return sorted(name for obj in live if (name := obj["metadata"]["name"]) not in rendered)
