"""Overview: are we meeting the SLOs, how fast is the error budget going, and where do errors come from."""

from __future__ import annotations

from glmserve.common import metrics as m
from glmserve.common import slo
from glmserve.common.promql import share
from glmserve.dashboards.grafana import Dashboard, Panel, Q, Target

FIVE_XX = 'status=~"5.."'
TTFT_GOOD = f'le="{slo.TTFT_BUCKET}"'


def availability(window: str) -> str:
    """Share of requests answered without a 5xx over `window`."""
    errors = f"sum(increase({Q.series(m.INGRESS_REQUESTS, FIVE_XX)}[{window}]))"
    total = f"sum(increase({Q.series(m.INGRESS_REQUESTS)}[{window}]))"
    return f"1 - {share(errors, total)}"


def ttft_within_objective(window: str) -> str:
    good = f"sum(increase({Q.series(m.INGRESS_TTFT, TTFT_GOOD, suffix='_bucket')}[{window}]))"
    return f"{good} / sum(increase({Q.series(m.INGRESS_TTFT, suffix='_count')}[{window}]))"


def _burn(window: str) -> str:
    errors = Q.sum_rate(m.INGRESS_REQUESTS, (), FIVE_XX, window=window)
    return f"{share(errors, Q.sum_rate(m.INGRESS_REQUESTS, window=window))} / {slo.AVAILABILITY.budget:g}"


def _quantiles(spec: m.MetricSpec, labels: tuple[str, ...], legend: str, qs: tuple[float, ...]) -> tuple[Target, ...]:
    return tuple(Target(Q.quantile(q, spec, labels), f"p{q * 100:g} {legend}") for q in qs)


DASHBOARD = Dashboard(
    uid="glmserve-overview",
    title="glmserve: overview and SLOs",
    description="Is the service meeting its objectives (availability, time to first token) and what does it serve.",
    panels=(
        Panel(
            f"Availability (objective {slo.AVAILABILITY.target:.1%})",
            "Share of requests answered without a 5xx over the dashboard's time range.",
            "percentunit",
            (Target(availability("$__range"), "availability"),),
            (("red", None), ("green", slo.AVAILABILITY.target)),
            kind="stat",
            width=6,
        ),
        Panel(
            f"First token within {slo.TTFT_THRESHOLD_S:g} s (objective {slo.TTFT.target:.0%})",
            "Share of requests whose first token left the ingress within the TTFT objective, over the time range.",
            "percentunit",
            (Target(ttft_within_objective("$__range"), "within objective"),),
            (("red", None), ("green", slo.TTFT.target)),
            kind="stat",
            width=6,
        ),
        Panel(
            f"Availability error budget left ({slo.WINDOW})",
            f"1 - (5xx share over {slo.WINDOW}) / budget ({slo.AVAILABILITY.budget:.1%}). Below 0: the SLO is missed.",
            "percentunit",
            (Target(f"1 - (1 - ({availability(slo.WINDOW)})) / {slo.AVAILABILITY.budget:g}", "budget left"),),
            (("red", None), ("orange", 0.0), ("green", 0.25)),
            kind="stat",
            width=6,
        ),
        Panel(
            "Requests per second",
            "All requests the ingress answered.",
            "reqps",
            (Target(Q.sum_rate(m.INGRESS_REQUESTS), "requests"),),
            kind="stat",
            width=6,
        ),
        Panel(
            "Requests per second by status",
            "HTTP status of every answered request: 429 is rate limiting, 503 overload, other 5xx failures.",
            "reqps",
            (Target(Q.sum_rate(m.INGRESS_REQUESTS, ("status",)), "{{status}}"),),
        ),
        Panel(
            "Availability budget burn rate",
            "How many times faster than sustainable the 5xx budget burns; alerts fire above 14.4 (1 h) and 6 (6 h).",
            "x",
            (Target(_burn("1h"), "1 h"), Target(_burn("6h"), "6 h")),
            (("green", None), ("orange", 6.0), ("red", 14.4)),
        ),
        Panel(
            "Time to first token",
            "At the ingress, from request arrival to the first generated token leaving it.",
            "s",
            _quantiles(m.INGRESS_TTFT, ("model",), "{{model}}", (0.5, 0.95, 0.99)),
            (("green", None), ("red", slo.TTFT_THRESHOLD_S)),
        ),
        Panel(
            "Inter-token latency",
            "Gap between consecutive streamed tokens of one request.",
            "s",
            _quantiles(m.INGRESS_ITL, ("model",), "{{model}}", (0.5, 0.95)),
            (("green", None), ("orange", 0.1), ("red", 0.25)),
        ),
        Panel(
            "Request duration",
            "From request arrival to the response's last byte.",
            "s",
            _quantiles(m.INGRESS_E2E, ("endpoint",), "{{endpoint}}", (0.5, 0.95)),
        ),
        Panel(
            "Tokens per second",
            "Prompt (input) and generated (output) tokens of completed requests.",
            "short",
            (Target(Q.sum_rate(m.INGRESS_TOKENS, ("model", "direction")), "{{model}} {{direction}}"),),
        ),
        Panel(
            "Requests in flight",
            "Requests the ingress is serving now.",
            "short",
            (Target(f"sum by (model) ({Q.series(m.INGRESS_IN_FLIGHT)})", "{{model}}"),),
        ),
        Panel(
            "Healthy engine replicas by pool",
            "Engine replicas passing Ray Serve's health check (Engine: colocated, Prefill, Decode).",
            "short",
            (Target(f"sum by (pool) ({Q.engine_replicas()})", "{{pool}}"),),
            (("red", None), ("green", 1.0)),
        ),
    ),
)
