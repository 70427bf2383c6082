"""Tenants & plans: who uses the service, how each plan is served, and what rate limiting refuses."""

from __future__ import annotations

from glmserve.common import metrics as m
from glmserve.common import slo
from glmserve.common.promql import share
from glmserve.dashboards.grafana import Dashboard, Panel, Q, Target

_OUTPUT = 'direction="output"'
_LIMITED = 'outcome="limited"'

DASHBOARD = Dashboard(
    uid="glmserve-tenants",
    title="glmserve: tenants and plans",
    description="Traffic, latency and refusals per plan; the busiest tenants (those named in metrics_tenants, "
    "the rest as 'other'); rate-limit decisions and the shared limits store.",
    panels=(
        Panel(
            "Requests per second by plan",
            "Answered requests, every status.",
            "reqps",
            (Target(Q.sum_rate(m.INGRESS_REQUESTS, ("plan",)), "{{plan}}"),),
        ),
        Panel(
            "Refused or failed share by plan",
            "Share of each plan's requests answered 429 (rate limited) or 5xx.",
            "percentunit",
            (
                Target(
                    share(
                        Q.sum_rate(m.INGRESS_REQUESTS, ("plan",), 'status=~"429|5.."'),
                        Q.sum_rate(m.INGRESS_REQUESTS, ("plan",)),
                    ),
                    "{{plan}}",
                ),
            ),
            (("green", None), ("orange", 0.01), ("red", 0.05)),
        ),
        Panel(
            "Tokens per second by plan",
            "Prompt (input) and generated (output) tokens of completed requests.",
            "short",
            (Target(Q.sum_rate(m.INGRESS_TOKENS, ("plan", "direction")), "{{plan}} {{direction}}"),),
        ),
        Panel(
            "Time to first token by plan (p95)",
            "Whether each plan gets the latency it pays for.",
            "s",
            (Target(Q.quantile(0.95, m.INGRESS_TTFT, ("plan",)), "{{plan}}"),),
            (("green", None), ("red", slo.TTFT_THRESHOLD_S)),
        ),
        Panel(
            "Top tenants by requests per second",
            "The ten busiest named tenants ('other' sums every tenant not in metrics_tenants).",
            "reqps",
            (Target(f"topk(10, {Q.sum_rate(m.INGRESS_REQUESTS, ('tenant', 'plan'))})", "{{tenant}} ({{plan}})"),),
        ),
        Panel(
            "Top tenants by generated tokens per second",
            "The ten named tenants generating the most output.",
            "short",
            (
                Target(
                    f"topk(10, {Q.sum_rate(m.INGRESS_TOKENS, ('tenant', 'plan'), _OUTPUT)})",
                    "{{tenant}} ({{plan}})",
                ),
            ),
        ),
        Panel(
            "Requests in flight by plan",
            "Concurrency each plan holds now.",
            "short",
            (Target(f"sum by (plan) ({Q.series(m.INGRESS_IN_FLIGHT)})", "{{plan}}"),),
        ),
        Panel(
            "Wait for an engine slot by priority (p90)",
            "How long requests waited in the router's flow control until an engine slot was theirs, per plan "
            "priority class (0 while slots are free). Requests no router answered wait in the ingress instead "
            "(glmserve_ingress_requests_waiting).",
            "s",
            (Target(Q.quantile(0.9, m.ROUTER_FLOW_WAIT, ("priority",)), "{{priority}}"),),
        ),
        Panel(
            "Requests let through to the engines per second, by priority",
            "Requests the router's flow control granted an engine slot; refusals are glmserve_router_flow_shed_total.",
            "reqps",
            (Target(Q.sum_rate(m.ROUTER_FLOW_DISPATCHED, ("priority",)), "{{priority}}"),),
        ),
        Panel(
            "Rate-limit decisions per second",
            "Admission decisions by plan and outcome (allowed, limited, unavailable).",
            "ops",
            (Target(Q.sum_rate(m.ADMISSION_DECISIONS, ("plan", "outcome")), "{{plan}} {{outcome}}"),),
        ),
        Panel(
            "Limited share by plan and dimension",
            "Share of each plan's admissions refused, by the limit that refused them.",
            "percentunit",
            (
                Target(
                    f"{Q.sum_rate(m.ADMISSION_DECISIONS, ('plan', 'dimension'), _LIMITED)}"
                    f" / on (plan) group_left {Q.sum_rate(m.ADMISSION_DECISIONS, ('plan',))}",
                    "{{plan}} {{dimension}}",
                ),
            ),
            (("green", None), ("orange", 0.05), ("red", 0.25)),
        ),
        Panel(
            "Admission latency (p99)",
            "Time to decide one admission, in the shared store or locally while it is down.",
            "s",
            (Target(Q.quantile(0.99, m.ADMISSION_LATENCY, ("source",)), "{{source}}"),),
            (("green", None), ("orange", 0.005), ("red", 0.025)),
        ),
        Panel(
            "Limits store (Redis) up",
            "1 while every replica reaches the shared limits store; 0 while its outage policy decides.",
            "bool",
            (Target(f"min({Q.series(m.ADMISSION_STORE_UP)})", "store up"),),
            (("red", None), ("green", 1.0)),
        ),
        Panel(
            "Fail-open admissions and lost settlements per second",
            "Admissions decided on local, approximate limits; request ends the store never recorded.",
            "ops",
            (
                Target(Q.sum_rate(m.ADMISSION_FAIL_OPEN), "fail-open admissions"),
                Target(Q.sum_rate(m.ADMISSION_SETTLEMENTS, ("outcome",)), "settlements {{outcome}}"),
            ),
        ),
        Panel(
            "Authentication failures per second",
            "Requests refused for their API key, by reason (missing, malformed, unknown).",
            "reqps",
            (Target(Q.sum_rate(m.AUTH_FAILURES, ("reason",)), "{{reason}}"),),
        ),
    ),
)
