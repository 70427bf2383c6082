"""Prometheus Operator objects: ServiceMonitors, a PodMonitor for the Ray pods, recording and alerting rules.

Every monitor copies the pods' ModelDeployment label onto their series as `model_deployment`,
which the rules (and the dashboards' `deployment` variable) select on.
"""

from __future__ import annotations

from typing import Any

from glmserve.common import metrics as m
from glmserve.common import slo
from glmserve.common.promql import MODEL_DEPLOYMENT, Query, share
from glmserve.operator.build.inputs import DeploymentInputs
from glmserve.operator.build.meta import COMPONENT_LABEL, DEPLOYMENT_LABEL, deployment_labels, metadata, selector
from glmserve.operator.build.services import ingress_port_name

API_VERSION = "monitoring.coreos.com/v1"
RAY_COMPONENTS = ("head", "ingress", "prefill", "decode")
SLO_RATIO = "glmserve:slo_errors:ratio_rate"
ROUTER_REFUSED_SHARE = 0.05
ROUTER_BYPASSED_SHARE = 0.05
KV_CACHE_FULL = 0.95
QUEUE_P95_SECONDS = 5
# A GPU replica's cold start from no free node (launch, drivers, image, weights) takes minutes:
# longer than this short of what autoscaling asks, and replicas are not coming.
SHORT_OF_DESIRED = "30m"
LOST = 'outcome="lost"'
# Ray Serve deployment names of the disaggregated pools (glmserve.serving.topology.DEPLOYMENT_PREFIX).
DEPLOYMENT_PREFIX = {"prefill": "Prefill", "decode": "Decode"}


def _meta(inputs: DeploymentInputs, name: str) -> dict[str, Any]:
    return metadata(name, inputs.owner, deployment_labels(inputs.name, "monitoring"), inputs.namespace)


def _relabelings() -> list[dict[str, Any]]:
    pod_label = "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in DEPLOYMENT_LABEL)
    return [{"action": "replace", "sourceLabels": [pod_label], "targetLabel": MODEL_DEPLOYMENT}]


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
            "spec": {
                "selector": {"matchLabels": selector(inputs.name, component)},
                "endpoints": [endpoint | {"relabelings": _relabelings()}],
            },
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
            "podMetricsEndpoints": [
                {"port": "metrics", "path": "/metrics", "interval": "30s", "relabelings": _relabelings()}
            ],
        },
    }


def _alert(name: str, expr: str, duration: str, severity: str, summary: str, **labels: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": duration,
        "labels": {"severity": severity, **labels},
        "annotations": {"summary": summary},
    }


def _windows() -> list[str]:
    return sorted({w for b in slo.BURN_WINDOWS for w in (b.long, b.short)}, key=_seconds)


def _seconds(window: str) -> int:
    return int(window[:-1]) * {"m": 60, "h": 3600, "d": 86400}[window[-1]]


def slo_recording_rules(q: Query) -> list[dict[str, Any]]:
    """Each SLO's share of bad requests over every burn-rate window, by ModelDeployment."""
    keep = ("namespace", MODEL_DEPLOYMENT)
    slow = f'le="{slo.TTFT_BUCKET}"'
    rules = []
    for window in _windows():
        errors = q.sum_rate(m.INGRESS_REQUESTS, keep, 'status=~"5.."', window=window)
        requests = q.sum_rate(m.INGRESS_REQUESTS, keep, window=window)
        fast = q.sum_rate(m.INGRESS_TTFT, keep, slow, suffix="_bucket", window=window)
        firsts = q.sum_rate(m.INGRESS_TTFT, keep, suffix="_count", window=window)
        for name, expr in (("availability", share(errors, requests)), ("ttft", f"1 - {fast} / {firsts}")):
            rules.append({"record": f"{SLO_RATIO}{window}", "expr": expr, "labels": {"slo": name}})
    return rules


def slo_alerts(scope: str, deployment: str) -> list[dict[str, Any]]:
    """Multi-window burn-rate alerts: fire while the budget burns `rate` times too fast in both windows."""
    alerts = []
    for key, objective, name in (
        ("availability", slo.AVAILABILITY, "GlmserveAvailabilityBudgetBurn"),
        ("ttft", slo.TTFT, "GlmserveTimeToFirstTokenBudgetBurn"),
    ):
        for burn in slo.BURN_WINDOWS:
            limit = f"{burn.rate * objective.budget:g}"
            expr = " and ".join(f'{SLO_RATIO}{w}{{slo="{key}",{scope}}} > {limit}' for w in (burn.long, burn.short))
            summary = (
                f"{deployment}: the {objective.name} error budget burns {burn.rate:g}x too fast "
                f"over {burn.long} (SLO {objective.target:.1%} over {slo.WINDOW})"
            )
            alerts.append(_alert(name, expr, burn.for_, burn.severity, summary, window=f"{burn.long}/{burn.short}"))
    return alerts


def pool_at_max_alerts(q: Query, inputs: DeploymentInputs, scope: str) -> list[dict[str, Any]]:
    """A pool at its most replicas while an SLO burns: autoscaling can do nothing more, a person
    must (raise maxReplicas, or the NodeGroup's nodes behind it). Burning: the 1-hour window over
    the 6-hour page's rate, so it fires within minutes of the budget burning and stays quiet on a blip."""
    burn = next(b for b in slo.BURN_WINDOWS if b.long == "6h")
    burning = " or ".join(
        f'{SLO_RATIO}1h{{slo="{key}",{scope}}} > {burn.rate * objective.budget:g}'
        for key, objective in (("availability", slo.AVAILABILITY), ("ttft", slo.TTFT))
    )
    alerts = []
    for role, pool in inputs.spec.pools().items():
        deployments = f'deployment=~"{DEPLOYMENT_PREFIX[role]}:.*"'
        healthy = f"sum({q.series(m.SERVE_REPLICA_HEALTHY, deployments)})"
        alerts.append(
            _alert(
                "GlmservePoolAtMaxReplicasWhileBurning",
                f"{healthy} >= {pool.max_replicas} and on () ({burning})",
                "15m",
                "warning",
                f"{inputs.namespace}/{inputs.name}: the {role} pool runs its maximum of {pool.max_replicas} "
                "replicas while an SLO's error budget burns; raise its maxReplicas (and its NodeGroup's maxNodes)",
                pool=role,
            )
        )
        # The policy's raw decision, above maxReplicas when the pool is at its maximum (the alert above).
        desired = f"clamp_max(max({q.series(m.SERVE_DESIRED_REPLICAS, deployments)}), {pool.max_replicas})"
        routed = q.series(m.ROUTER_POOL_REPLICAS, f'role="{role}"')
        actual = f"(max({routed}) or on () vector(0))"
        alerts.append(
            _alert(
                "GlmservePoolShortOfDesiredReplicas",
                f"{desired} > on () {actual}",
                SHORT_OF_DESIRED,
                "warning",
                f"{inputs.namespace}/{inputs.name}: the {role} pool has had fewer replicas serving than its "
                f"autoscaling asks for, for {SHORT_OF_DESIRED}; new replicas do not start (nodes, image pull, "
                "weights: see the pods of its worker group)",
                pool=role,
            )
        )
    return alerts


def component_alerts(q: Query, inputs: DeploymentInputs) -> list[dict[str, Any]]:
    ns, name = inputs.namespace, inputs.name
    deployment = f"{ns}/{name}"
    routes = m.ROUTER_ROUTES
    refused = share(q.sum_rate(routes, (), 'outcome=~"no_endpoints|overloaded"'), q.sum_rate(routes))
    queue_p95 = q.pool_quantile(0.95, m.VLLM_QUEUE_TIME, ("pool",))
    return [
        _alert(
            "GlmserveRouterDown",
            # per shard: a shard without pods leaves its engines idle and its tenants uncached
            " or ".join(
                f'(sum(up{{namespace="{ns}",service="{shard.name}"}}) or vector(0)) == 0'
                for shard in inputs.router_shards
            ),
            "5m",
            "critical",
            f"{deployment}: no router pod is up; requests cannot be admitted"
            if inputs.spec.router.shards == 1
            else f"{deployment}: no pod of a router shard is up; its tenants go to other shards, its engines idle",
        ),
        _alert(
            "GlmserveRouterUnavailable",
            f"{q.sum_rate(m.INGRESS_ROUTER_FALLBACKS)} / {q.sum_rate(m.INGRESS_REQUESTS)} > {ROUTER_BYPASSED_SHARE}",
            "5m",
            "warning",
            f"{deployment}: over {ROUTER_BYPASSED_SHARE:.0%} of requests bypass the router (unreachable or too slow); "
            "routing ignores the KV caches",
        ),
        _alert(
            "GlmserveRouterRefusing",
            f"{refused} > {ROUTER_REFUSED_SHARE}",
            "10m",
            "warning",
            f"{deployment}: the router refuses over {ROUTER_REFUSED_SHARE:.0%} of requests (no endpoint or overloaded)",
        ),
        _alert(
            "GlmserveRouterKvEventsLost",
            f"sum(increase({q.series(m.ROUTER_KV_EVENT_GAPS, LOST)}[15m])) > 0",
            "0m",
            "warning",
            f"{deployment}: the router lost KV events; it routes on a stale view of the caches until they resync",
        ),
        _alert(
            "GlmserveLimitsStoreDown",
            f"min({q.series(m.ADMISSION_STORE_UP)}) == 0",
            "2m",
            "critical",
            f"{deployment}: the rate-limit store (Redis) is unreachable; admission runs on its outage policy",
        ),
        _alert(
            "GlmserveLimitsSettlementsLost",
            f"sum(increase({q.series(m.ADMISSION_SETTLEMENTS, LOST)}[15m])) > 0",
            "0m",
            "warning",
            f"{deployment}: request ends were never recorded in the limits store; tenants were under-charged",
        ),
        _alert(
            "GlmserveKvCacheSaturated",
            f"max by (ReplicaId) ({q.series(m.VLLM_KV_CACHE_USAGE)}) > {KV_CACHE_FULL}",
            "15m",
            "warning",
            f"{deployment}: an engine replica's KV cache is over {KV_CACHE_FULL:.0%} full; add replicas or memory",
        ),
        _alert(
            "GlmserveEngineQueueing",
            f"{queue_p95} > {QUEUE_P95_SECONDS}",
            "10m",
            "warning",
            f"{deployment}: requests wait over {QUEUE_P95_SECONDS} s (p95) for an engine of a pool; it is saturated",
        ),
        _alert(
            "GlmserveRayPodDown",
            f'up{{namespace="{ns}",job="{ns}/{name}-ray"}} == 0',
            "10m",
            "warning",
            f"{deployment}: a Ray pod has not been scraped for 10 minutes",
        ),
    ]


def build_prometheus_rule(inputs: DeploymentInputs) -> dict[str, Any]:
    ns, name = inputs.namespace, inputs.name
    scope = f'namespace="{ns}",{MODEL_DEPLOYMENT}="{name}"'
    q = Query(lambda _spec: scope)
    # One group: its rules run in order, so the burn-rate alerts read this evaluation's ratios.
    rules = slo_recording_rules(q) + slo_alerts(scope, f"{ns}/{name}") + component_alerts(q, inputs)
    rules += pool_at_max_alerts(q, inputs, scope)
    return {
        "apiVersion": API_VERSION,
        "kind": "PrometheusRule",
        "metadata": _meta(inputs, name),
        "spec": {"groups": [{"name": f"glmserve.{ns}.{name}", "rules": rules}]},
    }
