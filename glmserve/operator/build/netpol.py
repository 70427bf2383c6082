"""The router's NetworkPolicy: only the deployment's own callers reach the router.

The router's token (random_secrets.py) proves a caller; this keeps everyone else from reaching
the port at all: its gRPC port admits only the deployment's ingress and engine pods, its metrics
port only Prometheus (the Prometheus Operator's pods, `app.kubernetes.io/name: prometheus`, in any
namespace: what scrapes the ServiceMonitors monitoring.py renders). Kubelet probes come from the
node, which network policies do not filter. Egress stays open: the router dials Redis and the
engines' KV-event publishers. One policy covers every shard's pods (they share the router's labels).
"""

from __future__ import annotations

from typing import Any

from glmserve.operator.build.inputs import ROUTER_METRICS_PORT, ROUTER_PORT, DeploymentInputs
from glmserve.operator.build.meta import COMPONENT_LABEL, DEPLOYMENT_LABEL, deployment_labels, metadata, selector

SCRAPER = {"app.kubernetes.io/name": "prometheus"}


def router_callers(inputs: DeploymentInputs) -> list[str]:
    """The components whose pods call the router: the ingress and every engine pool."""
    return ["ingress", *inputs.plan.pools()]


def build_router_network_policy(inputs: DeploymentInputs) -> dict[str, Any]:
    callers = {
        "matchLabels": {DEPLOYMENT_LABEL: inputs.name},
        "matchExpressions": [{"key": COMPONENT_LABEL, "operator": "In", "values": router_callers(inputs)}],
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(
            inputs.router_service, inputs.owner, deployment_labels(inputs.name, "router"), inputs.namespace
        ),
        "spec": {
            "podSelector": {"matchLabels": selector(inputs.name, "router")},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": callers}], "ports": [{"protocol": "TCP", "port": ROUTER_PORT}]},
                {
                    "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": SCRAPER}}],
                    "ports": [{"protocol": "TCP", "port": ROUTER_METRICS_PORT}],
                },
            ],
        },
    }
