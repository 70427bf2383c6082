"""Prometheus Operator objects: ServiceMonitors, a PodMonitor for the Ray pods, alerting rules."""

from __future__ import annotations

from typing import Any

from glmserve.common.metrics import INGRESS_REQUESTS, INGRESS_TTFT
from glmserve.operator.build.inputs import DeploymentInputs
from glmserve.operator.build.meta import COMPONENT_LABEL, DEPLOYMENT_LABEL, deployment_labels, metadata, selector
from glmserve.operator.build.services import ingress_port_name

API_VERSION = "monitoring.coreos.com/v1"
RAY_COMPONENTS = ("head", "ingress", "prefill", "decode")
ERROR_RATIO = 0.05
TTFT_P95_SECONDS = 10


def _meta(inputs: DeploymentInputs, name: str) -> dict[str, Any]:
    return metadata(name, inputs.owner, deployment_labels(inputs.name, "monitoring"), inputs.namespace)


def build_service_monitors(inputs: DeploymentInputs) -> list[dict[str, Any]]:
    ingress_endpoint: dict[str, Any] = {"port": ingress_port_name(inputs), "path": "/metrics", "interval": "30s"}
    if inputs.tls:
        # Targets are pod IPs, which the serving certificate does not name.
        ingress_endpoint |= {"scheme": "https", "tlsConfig": {"insecureSkipVerify": True}}
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "ServiceMonitor",
            "metadata": _meta(inputs, f"{inputs.name}-{component}"),
            "spec": {"selector": {"matchLabels": selector(inputs.name, component)}, "endpoints": [endpoint]},
        }
        for component, endpoint in (
            ("ingress", ingress_endpoint),
            ("router", {"port": "metrics", "path": "/metrics", "interval": "30s"}),
        )
    ]


def build_pod_monitor(inputs: DeploymentInputs) -> dict[str, Any]:
    """Ray's metrics agent on every Ray pod: Ray, Serve and vLLM engine metrics."""
    return {
        "apiVersion": API_VERSION,
        "kind": "PodMonitor",
        "metadata": _meta(inputs, f"{inputs.name}-ray"),
        "spec": {
            "selector": {
                "matchLabels": {DEPLOYMENT_LABEL: inputs.name},
                "matchExpressions": [{"key": COMPONENT_LABEL, "operator": "In", "values": list(RAY_COMPONENTS)}],
            },
            "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
        },
    }


def _alert(name: str, expr: str, duration: str, severity: str, summary: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": duration,
        "labels": {"severity": severity},
        "annotations": {"summary": summary},
    }


def build_prometheus_rule(inputs: DeploymentInputs) -> dict[str, Any]:
    ns, name = inputs.namespace, inputs.name
    ingress = f'namespace="{ns}",service="{inputs.ingress_service}"'
    requests = INGRESS_REQUESTS.name
    rules = [
        _alert(
            "GlmserveIngressErrorRate",
            f'sum(rate({requests}{{{ingress},status=~"5.."}}[5m])) / sum(rate({requests}{{{ingress}}}[5m]))'
            f" > {ERROR_RATIO}",
            "10m",
            "warning",
            f"{ns}/{name}: more than {ERROR_RATIO:.0%} of requests fail with 5xx",
        ),
        _alert(
            "GlmserveTimeToFirstTokenHigh",
            f"histogram_quantile(0.95, sum by (le) (rate({INGRESS_TTFT.name}_bucket{{{ingress}}}[5m])))"
            f" > {TTFT_P95_SECONDS}",
            "15m",
            "warning",
            f"{ns}/{name}: p95 time to first token above {TTFT_P95_SECONDS} s",
        ),
        _alert(
            "GlmserveRouterDown",
            f'(sum(up{{namespace="{ns}",service="{inputs.router_service}"}}) or vector(0)) == 0',
            "5m",
            "critical",
            f"{ns}/{name}: no router pod is up; requests cannot be admitted",
        ),
        _alert(
            "GlmserveRayPodDown",
            f'up{{namespace="{ns}",job="{ns}/{name}-ray"}} == 0',
            "10m",
            "warning",
            f"{ns}/{name}: a Ray pod has not been scraped for 10 minutes",
        ),
    ]
    return {
        "apiVersion": API_VERSION,
        "kind": "PrometheusRule",
        "metadata": _meta(inputs, name),
        "spec": {"groups": [{"name": f"glmserve.{ns}.{name}", "rules": rules}]},
    }
