"""Services: the OpenAI ingress (the Serve HTTP port of the ingress pods) and the router (gRPC)."""

from __future__ import annotations

from typing import Any

from glmserve.operator.build.inputs import (
    ROUTER_METRICS_PORT,
    ROUTER_PORT,
    SERVE_PORT,
    DeploymentInputs,
    RouterShard,
)
from glmserve.operator.build.meta import deployment_labels, metadata, selector


def _service(
    inputs: DeploymentInputs,
    name: str,
    labels: dict[str, str],
    pods: dict[str, str],
    ports: list[dict[str, Any]],
    *,
    headless: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "ClusterIP", "selector": pods, "ports": ports}
    if headless:
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, inputs.owner, labels, inputs.namespace),
        "spec": spec,
    }


def ingress_port_name(inputs: DeploymentInputs) -> str:
    return "https" if inputs.tls else "http"


def build_ingress_service(inputs: DeploymentInputs) -> dict[str, Any]:
    scheme = ingress_port_name(inputs)
    port = {"name": scheme, "port": SERVE_PORT, "targetPort": "serve", "protocol": "TCP", "appProtocol": scheme}
    labels = deployment_labels(inputs.name, "ingress")
    return _service(inputs, inputs.ingress_service, labels, selector(inputs.name, "ingress"), [port])


def build_router_services(inputs: DeploymentInputs) -> list[dict[str, Any]]:
    """One per shard: a shard's name resolves to its own replicas only."""
    return [build_router_service(inputs, shard) for shard in inputs.router_shards]


def build_router_service(inputs: DeploymentInputs, shard: RouterShard) -> dict[str, Any]:
    ports = [
        {"name": "grpc", "port": ROUTER_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
        {"name": "metrics", "port": ROUTER_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
    ]
    # Headless: its name resolves to every router pod, and each engine registers with each of
    # them (a virtual IP would hand each engine's one connection to one pod; the others would
    # never learn of it).
    return _service(inputs, shard.name, shard.labels(), shard.selector(), ports, headless=True)
