"""The PrometheusRule the operator renders, through promtool: it loads, and every alert fires when it
should and stays silent when it should not (`promtool test rules` over synthetic series)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from glmserve.common import metrics as m
from glmserve.common import slo
from glmserve.operator.build.monitoring import build_prometheus_rule
from tests.operator.conftest import example_inputs, sharded_inputs

INPUTS = example_inputs()
NS, NAME = INPUTS.namespace, INPUTS.name
SCOPE = f'namespace="{NS}",model_deployment="{NAME}"'
RULE_SPEC = build_prometheus_rule(INPUTS)["spec"]
ALERTS = [rule for group in RULE_SPEC["groups"] for rule in group["rules"] if "alert" in rule]
DAY = 24 * 60  # minutes


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: scripts/install.sh --test installs it (apt package prometheus)")
    return path


def counter(step_min: int, *segments: tuple[int, int]) -> str:
    """promtool's notation for a counter from 0 growing by `per_step` each step for `minutes`, segment
    after segment."""
    parts, value = ["0"], 0
    for minutes, per_step in segments:
        steps = minutes // step_min
        parts.append(f"{value + per_step}+{per_step}x{steps - 1}")
        value += per_step * steps
    return " ".join(parts)


def gauge(step_min: int, *segments: tuple[int, float]) -> str:
    return " ".join(f"{value}x{minutes // step_min - 1}" for minutes, value in segments)


@dataclass(frozen=True)
class Case:
    id: str
    alert: str
    series: dict[str, str]
    at_min: int
    firing: list[dict[str, str]]  # the labels of each alert firing at `at_min`, the rule's own included
    step_min: int = 1
    evaluation_min: int = 1

    def fires(self, rule: dict[str, Any]) -> bool:
        return any(rule["labels"].items() <= labels.items() for labels in self.firing)


def _expected(case: Case, labels: dict[str, str]) -> dict[str, Any]:
    rule = next(r for r in ALERTS if r["alert"] == case.alert and r["labels"].items() <= labels.items())
    return {"exp_labels": labels, "exp_annotations": rule["annotations"]}


def _test_file(case: Case, rules: Path) -> dict[str, Any]:
    return {
        "rule_files": [str(rules)],
        "evaluation_interval": f"{case.evaluation_min}m",
        "tests": [
            {
                "interval": f"{case.step_min}m",
                "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                "alert_rule_test": [
                    {
                        "eval_time": f"{case.at_min}m",
                        "alertname": case.alert,
                        "exp_alerts": [_expected(case, labels) for labels in case.firing],
                    }
                ],
            }
        ],
    }


# -- burn-rate alerts: over three days of history, at a 3-minute step (so 5-minute windows hold two
# samples) with rules evaluated every 15 minutes (keeps promtool fast) ---------------------------

BURN_STEP, BURN_EVALUATION = 3, 15
HISTORY = 3 * DAY + 6 * 60
PER_STEP = 2000  # requests per step
Segments = list[tuple[int, float]]  # (minutes, burn rate): that many times the budget's share is bad


def _bad(objective: slo.Objective, burn: float) -> int:
    return round(PER_STEP * objective.budget * burn)


def _availability(history: Segments) -> dict[str, str]:
    series = f'{m.INGRESS_REQUESTS.name}{{{SCOPE},endpoint="chat",model="glm",plan="open",tenant="other"'
    bad = [(mins, _bad(slo.AVAILABILITY, burn)) for mins, burn in history]
    return {
        f'{series},status="200"}}': counter(BURN_STEP, *((mins, PER_STEP - n) for mins, n in bad)),
        f'{series},status="500"}}': counter(BURN_STEP, *bad),
    }


def _ttft(history: Segments) -> dict[str, str]:
    labels = f'{SCOPE},model="glm",plan="open"'
    slow = [(mins, _bad(slo.TTFT, burn)) for mins, burn in history]
    return {
        f'{m.INGRESS_TTFT.name}_bucket{{{labels},le="{slo.TTFT_BUCKET}"}}': counter(
            BURN_STEP, *((mins, PER_STEP - n) for mins, n in slow)
        ),
        f"{m.INGRESS_TTFT.name}_count{{{labels}}}": counter(BURN_STEP, *((mins, PER_STEP) for mins, _ in slow)),
    }


def _severity(window: str) -> str:
    return next(b.severity for b in slo.BURN_WINDOWS if f"{b.long}/{b.short}" == window)


# Each burns the budget at one speed only, and so fires (at HISTORY) the windows listed.
BURNS: dict[str, tuple[Segments, list[str]]] = {
    "within-budget": ([(HISTORY, 0.5)], []),
    "outage-1h": ([(HISTORY - 60, 0), (60, 20)], ["1h/5m"]),
    "degraded-4h": ([(HISTORY - 240, 0), (240, 10)], ["6h/30m"]),
    "slow-leak-3d": ([(HISTORY, 2)], ["3d/6h"]),
    "outage-over-15m-ago": ([(HISTORY - 75, 0), (60, 20), (15, 0)], []),
}
BURN_CASES = [
    Case(
        f"{key}-{burn}",
        alert,
        series(history),
        HISTORY,
        [
            {"namespace": NS, "model_deployment": NAME, "slo": key, "window": w, "severity": _severity(w)}
            for w in windows
        ],
        BURN_STEP,
        BURN_EVALUATION,
    )
    for key, alert, series in (
        ("availability", "GlmserveAvailabilityBudgetBurn", _availability),
        ("ttft", "GlmserveTimeToFirstTokenBudgetBurn", _ttft),
    )
    for burn, (history, windows) in BURNS.items()
]


# -- the platform's components ---------------------------------------------------------------

REQUESTS = f'{m.INGRESS_REQUESTS.name}{{{SCOPE},endpoint="chat",model="glm",status="200",plan="pro",tenant="other"'
FALLBACKS = f"{m.INGRESS_ROUTER_FALLBACKS.name}{{{SCOPE},reason="
ROUTES = f'{m.ROUTER_ROUTES.name}{{{SCOPE},model="glm",outcome='
REPLICA = 'ReplicaId="r1"'
HEALTHY = f'{m.SERVE_REPLICA_HEALTHY.name}{{{SCOPE},application="glmserve",deployment="Decode:glm",replica="r1"}}'
QUEUE = f'{m.VLLM_QUEUE_TIME.name}_bucket{{{SCOPE},{REPLICA},model_name="glm",le='


def _queue(slow_share_pct: int) -> dict[str, str]:
    fast = 100 - slow_share_pct
    return {
        f'{QUEUE}"1.0"}}': counter(1, (30, fast)),
        f'{QUEUE}"10.0"}}': counter(1, (30, 100)),
        f'{QUEUE}"+Inf"}}': counter(1, (30, 100)),
        HEALTHY: gauge(1, (30, 1)),
    }


ROUTER_UP = f'up{{namespace="{NS}",service="{INPUTS.router_service}",job="{INPUTS.router_service}",instance="a"}}'
RAY_UP = f'up{{namespace="{NS}",job="{NS}/{NAME}-ray",instance="b"}}'
STORE_UP = f'{m.ADMISSION_STORE_UP.name}{{{SCOPE},instance="a"}}'
KV_USAGE = f'{m.VLLM_KV_CACHE_USAGE.name}{{{SCOPE},{REPLICA},model_name="glm"}}'
GAPS = f"{m.ROUTER_KV_EVENT_GAPS.name}{{{SCOPE},outcome="
SETTLEMENTS = f"{m.ADMISSION_SETTLEMENTS.name}{{{SCOPE},outcome="

CRITICAL, WARNING = {"severity": "critical"}, {"severity": "warning"}
COMPONENT_CASES = [
    Case("router-down", "GlmserveRouterDown", {ROUTER_UP: gauge(1, (10, 0))}, 9, [CRITICAL]),
    Case("router-never-scraped", "GlmserveRouterDown", {RAY_UP: gauge(1, (10, 1))}, 9, [CRITICAL]),
    Case("router-up", "GlmserveRouterDown", {ROUTER_UP: gauge(1, (10, 1))}, 9, []),
    Case(
        "router-bypassed",
        "GlmserveRouterUnavailable",
        {f"{REQUESTS}}}": counter(1, (30, 100)), f'{FALLBACKS}"unavailable"}}': counter(1, (30, 10))},
        29,
        [WARNING],
    ),
    Case(
        "router-answering",
        "GlmserveRouterUnavailable",
        {f"{REQUESTS}}}": counter(1, (30, 100)), f'{FALLBACKS}"unavailable"}}': gauge(1, (30, 0))},
        29,
        [],
    ),
    Case(
        "router-refusing",
        "GlmserveRouterRefusing",
        {f'{ROUTES}"local_prefill"}}': counter(1, (30, 90)), f'{ROUTES}"overloaded"}}': counter(1, (30, 10))},
        29,
        [WARNING],
    ),
    Case(
        "router-refusing-few",
        "GlmserveRouterRefusing",
        {f'{ROUTES}"local_prefill"}}': counter(1, (30, 99)), f'{ROUTES}"no_endpoints"}}': counter(1, (30, 1))},
        29,
        [],
    ),
    Case(
        "kv-events-lost", "GlmserveRouterKvEventsLost", {f'{GAPS}"lost"}}': counter(1, (10, 0), (5, 1))}, 14, [WARNING]
    ),
    Case("kv-events-replayed", "GlmserveRouterKvEventsLost", {f'{GAPS}"replayed"}}': counter(1, (15, 1))}, 14, []),
    Case("limits-store-down", "GlmserveLimitsStoreDown", {STORE_UP: gauge(1, (5, 1), (10, 0))}, 14, [CRITICAL]),
    Case("limits-store-blip", "GlmserveLimitsStoreDown", {STORE_UP: gauge(1, (13, 1), (1, 0), (1, 1))}, 14, []),
    Case(
        "settlements-lost",
        "GlmserveLimitsSettlementsLost",
        {f'{SETTLEMENTS}"lost"}}': counter(1, (10, 0), (5, 2))},
        14,
        [WARNING],
    ),
    Case(
        "settlements-deferred",
        "GlmserveLimitsSettlementsLost",
        {f'{SETTLEMENTS}"deferred"}}': counter(1, (15, 2))},
        14,
        [],
    ),
    Case(
        "kv-cache-full",
        "GlmserveKvCacheSaturated",
        {KV_USAGE: gauge(1, (30, 0.97))},
        29,
        [{"ReplicaId": "r1", **WARNING}],
    ),
    Case("kv-cache-full-briefly", "GlmserveKvCacheSaturated", {KV_USAGE: gauge(1, (20, 0.5), (10, 0.97))}, 29, []),
    Case("engine-queueing", "GlmserveEngineQueueing", _queue(50), 29, [{"pool": "Decode", **WARNING}]),
    Case("engine-not-queueing", "GlmserveEngineQueueing", _queue(2), 29, []),
    Case(
        "ray-pod-down",
        "GlmserveRayPodDown",
        {RAY_UP: gauge(1, (20, 0))},
        19,
        [{"namespace": NS, "job": f"{NS}/{NAME}-ray", "instance": "b", "severity": "warning"}],
    ),
    Case("ray-pod-up", "GlmserveRayPodDown", {RAY_UP: gauge(1, (20, 1))}, 19, []),
]


# -- a pool at its maximum while the TTFT budget burns (decode: 2 replicas at most) ---------------

TTFT_LABELS = f'{SCOPE},model="glm",plan="open"'


def _pool_at_max(replicas: int, slow_pct: int, deployment: str = "Decode") -> dict[str, str]:
    series = {
        f'{m.INGRESS_TTFT.name}_bucket{{{TTFT_LABELS},le="{slo.TTFT_BUCKET}"}}': counter(1, (90, 100 - slow_pct)),
        f"{m.INGRESS_TTFT.name}_count{{{TTFT_LABELS}}}": counter(1, (90, 100)),
    }
    for n in range(replicas):
        replica = f'{SCOPE},application="glmserve",deployment="{deployment}:glm",replica="r{n}"'
        series[f"{m.SERVE_REPLICA_HEALTHY.name}{{{replica}}}"] = gauge(1, (90, 1))
    return series


AT_MAX = "GlmservePoolAtMaxReplicasWhileBurning"
COMPONENT_CASES += [
    Case("decode-at-max-burning", AT_MAX, _pool_at_max(2, 50), 89, [{"pool": "decode", **WARNING}]),
    Case("prefill-at-max-burning", AT_MAX, _pool_at_max(1, 50, "Prefill"), 89, [{"pool": "prefill", **WARNING}]),
    Case("below-max-burning", AT_MAX, _pool_at_max(1, 50), 89, []),
    Case("at-max-within-budget", AT_MAX, _pool_at_max(2, 2), 89, []),
]


# -- a pool short of what autoscaling asks (decode: 2 replicas at most) -----------------------------


def _short(desired: int, routed: list[tuple[int, int]] | None, deployment: str = "Decode") -> dict[str, str]:
    """Serve's desired replicas for 60 minutes, and the router's replicas of the pool (minutes, count)."""
    serve = f'{SCOPE},application="glmserve",deployment="{deployment}:glm"'
    series = {f"{m.SERVE_DESIRED_REPLICAS.name}{{{serve}}}": gauge(1, (60, desired))}
    if routed is not None:
        router = f'{SCOPE},model="glm",role="{deployment.lower()}"'
        series[f"{m.ROUTER_POOL_REPLICAS.name}{{{router}}}"] = gauge(1, *routed)
    return series


SHORT = "GlmservePoolShortOfDesiredReplicas"
COMPONENT_CASES += [
    Case("decode-short-for-40m", SHORT, _short(2, [(60, 1)]), 40, [{"pool": "decode", **WARNING}]),
    Case("prefill-never-started", SHORT, _short(1, None, "Prefill"), 40, [{"pool": "prefill", **WARNING}]),
    Case("decode-started-after-20m", SHORT, _short(2, [(20, 1), (40, 2)]), 40, []),
    # Asking for more than maxReplicas while at it is GlmservePoolAtMaxReplicasWhileBurning's case.
    Case("decode-at-max-asking-more", SHORT, _short(5, [(60, 2)]), 40, []),
]


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULE_SPEC))
    result = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in RULE_SPEC['groups'])} rules found" in result.stdout


@pytest.mark.parametrize("case", BURN_CASES + COMPONENT_CASES, ids=lambda c: f"{c.alert}-{c.id}")
def test_alert(case: Case, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULE_SPEC))
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump(_test_file(case, rules)))
    result = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases = BURN_CASES + COMPONENT_CASES
    for rule in ALERTS:
        name = f"{rule['alert']} {rule['labels']}"
        assert any(c.fires(rule) for c in cases if c.alert == rule["alert"]), f"{name} never fires in a test"
        assert any(not c.fires(rule) for c in cases if c.alert == rule["alert"]), f"{name} is never tested silent"


@pytest.mark.parametrize(("shard_1_up", "fires"), [(0, True), (1, False)], ids=["one-shard-down", "all-up"])
def test_a_sharded_router_is_down_when_any_shard_is(shard_1_up: int, fires: bool, tmp_path: Path) -> None:
    """A shard with no pod up leaves its engines idle: the alert fires though the other shard is up."""
    inputs = sharded_inputs(2)
    spec = build_prometheus_rule(inputs)["spec"]
    [rule] = [r for g in spec["groups"] for r in g["rules"] if r.get("alert") == "GlmserveRouterDown"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(spec))
    series = {
        f'up{{namespace="{NS}",service="{shard.name}",job="{shard.name}",instance="a"}}': gauge(
            1, (10, 1 if shard.index == 0 else shard_1_up)
        )
        for shard in inputs.router_shards
    }
    expected = [{"exp_labels": rule["labels"], "exp_annotations": rule["annotations"]}] if fires else []
    tests = tmp_path / "tests.yaml"
    tests.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(rules)],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [{"series": s, "values": v} for s, v in series.items()],
                        "alert_rule_test": [{"eval_time": "9m", "alertname": rule["alert"], "exp_alerts": expected}],
                    }
                ],
            }
        )
    )
    result = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
