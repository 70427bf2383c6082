"""Observability, verified live: `glmserve up --disaggregated` (with its router) and tenants on two
plans under load (one tenant over its rate limit, one request with a wrong key), a real Prometheus
that finds every endpoint through the ingress's /metrics/sd, every dashboard query run through its
HTTP API, promtool on every endpoint, and the traces the ingress and the router export over OTLP.

A panel over metrics of a component the stack does not run, or of a feature it does not use
(autoscaling, scale from zero: tests/serving/test_autoscaling_live.py runs those), is skipped,
saying which.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import openai
import pytest
import yaml

from glmserve.common import metrics as m
from glmserve.common import tracing as t
from glmserve.common.tenancy import hash_api_key
from glmserve.dashboards import DASHBOARDS
from tests.admission.redis_server import RedisServer, serve_redis
from tests.helpers.grafana import SPECS, as_sent, metric_names
from tests.helpers.otlp import ReceivedSpan, otlp_receiver
from tests.helpers.prometheus import Prometheus, prometheus
from tests.serving.conftest import Stack, run_stack

pytestmark = pytest.mark.slow

MODEL = "glm-4.6-tiny"
# acme carries the load and is named in metrics_tenants; hobby's plan allows 2 requests a minute.
ACME_KEY, HOBBY_KEY = "sk-acme-observability", "sk-hobby-observability"
TENANTS = {
    "plans": [
        {"name": "pro", "priority": "premium", "requestsPerMinute": 10000},
        {"name": "free", "priority": "batch", "requestsPerMinute": 2},
    ],
    "tenants": [
        {"id": "acme", "plan": "pro", "apiKeys": [{"sha256": hash_api_key(ACME_KEY)}]},
        {"id": "hobby", "plan": "free", "apiKeys": [{"sha256": hash_api_key(HOBBY_KEY)}]},
    ],
}
# Endpoints whose metric names glmserve chooses: promtool must find nothing to lint there. Ray's
# export carries Ray's and vLLM's names (`_ms` units, camelCase labels), which must parse.
OWNED_JOBS = {"glmserve-ingress", "glmserve-router"}
SHARED_PREFIX = "You are a coding agent working in a large repository. " * 6
ENGINE_REPLICAS = 2  # one prefill, one decode
RAY_REPORT_S = 6  # Ray's metrics export refreshes every few seconds
# Over the router's 512 uncached tokens, past which it prefers remote prefill.
LONG_PROMPT = "A prompt the decode engine has never seen before, spanning several KV blocks. " * 60
PROMPTS = [SHARED_PREFIX + "Fix the failing test.", SHARED_PREFIX + "Add a changelog entry.", "hi"]


@dataclass
class Live:
    stack: Stack
    prometheus: Prometheus
    sd: list[dict[str, object]]
    expositions: dict[str, str]  # job -> its /metrics text
    spans: list[ReceivedSpan]
    requests: int

    @property
    def running(self) -> set[str]:
        """Components whose metrics some endpoint exports (a family is listed even before it has samples)."""
        families = {name for text in self.expositions.values() for name in re.findall(r"^# TYPE (\S+)", text, re.M)}
        return {m.component(s) for s in SPECS.values() if {s.name, s.name.removesuffix("_total")} & families}


def _drive(stack: Stack, round_: int) -> int:
    """One round of load: acme's streamed and whole chats and a completion, on prompts sharing a
    prefix (so the prefix cache hits) and a new long one (which the router prefills remotely);
    hobby over its plan's limit; a wrong key. Returns how many requests acme completed."""
    for _ in range(3):
        with contextlib.suppress(openai.RateLimitError):
            stack.client(HOBBY_KEY, max_retries=0).completions.create(model=MODEL, prompt="hi", max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        stack.client("sk-wrong", max_retries=0).completions.create(model=MODEL, prompt="hi", max_tokens=2)
    client = stack.client(ACME_KEY, max_retries=0)
    for prompt in [*PROMPTS, f"Round {round_}. {LONG_PROMPT}"]:
        for _ in client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        ):
            pass
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=4)
    client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=4)
    return len(PROMPTS) + 3


def _value(prom: Prometheus, expr: str) -> float:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else math.nan


def _load_until_engines_move(stack: Stack, prom: Prometheus) -> int:
    """Rounds of load until Prometheus saw every engine replica's counters grow between two scrapes:
    Ray exports engine metrics every few seconds, and a counter only once it first moved. Returns
    how many requests acme completed."""
    moving = f"count(sum by (ReplicaId) (rate({m.VLLM_PROMPT_TOKENS_BY_SOURCE.name}[5m])) > 0)"
    requests, rounds, deadline = 0, 0, time.monotonic() + 300
    while not _value(prom, moving) >= ENGINE_REPLICAS:  # NaN (no series yet) is not >= either
        assert time.monotonic() < deadline, f"engine counters did not move in Prometheus: {moving}"
        requests += _drive(stack, rounds)
        rounds += 1
        time.sleep(RAY_REPORT_S)
    return requests


def _acme_roots(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if not s.parent_id and s.attributes.get(t.TENANT) == "acme"]


def _all_acme_spans(spans: list[ReceivedSpan], requests: int) -> bool:
    """Each of acme's requests has its request span, the router's span and the decode engine's
    (the first ends last; the others come from other processes)."""
    traces = {s.trace_id for s in _acme_roots(spans)}
    routed = {s.trace_id for s in spans if s.service == "glmserve-router"}
    decoded = {s.trace_id for s in spans if s.service == "glmserve-decode"}
    return len(traces) == requests and traces <= routed and traces <= decoded


def _expositions(stack: Stack, sd: list[dict[str, object]]) -> dict[str, str]:
    texts = {}
    with stack.http() as http:
        for group in sd:
            labels, targets = group["labels"], group["targets"]
            assert isinstance(labels, dict) and isinstance(targets, list)
            [address] = targets
            url = f"{labels['__scheme__']}://{address}{labels['__metrics_path__']}"
            texts[labels["job"]] = http.get(url).raise_for_status().text
    return texts


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from serve_redis(tmp_path_factory)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("observability")
    config = tmp / "glmserve.yaml"
    tenants = tmp / "tenants.yaml"
    tenants.write_text(yaml.safe_dump(TENANTS))
    settings = {
        "disaggregated": True,
        "tenants_file": str(tenants),
        "redis_url": redis_server.url,
        "metrics_tenants": ["acme"],
    }
    config.write_text(yaml.safe_dump(settings))
    with otlp_receiver() as receiver, pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
        for stack in run_stack(tmp, ["--config", str(config)]):
            with stack.http() as http:
                sd = http.get(f"{stack.root}/metrics/sd").raise_for_status().json()
            with prometheus(tmp, f"{stack.root}/metrics/sd", stack.cert) as prom:
                deadline = time.monotonic() + 60
                while _value(prom, "count(up == 1)") != len(sd):
                    assert time.monotonic() < deadline, f"not every discovered target is up: {prom.active_targets()}"
                    time.sleep(1)
                requests = _load_until_engines_move(stack, prom)
                spans = receiver.wait_until(partial(_all_acme_spans, requests=requests))
                yield Live(stack, prom, sd, _expositions(stack, sd), spans, requests)


def test_metrics_sd_lists_every_endpoint_and_prometheus_scrapes_them(live: Live) -> None:
    jobs = ["glmserve-ingress", "glmserve-ray", "glmserve-router"]
    assert sorted(g["labels"]["job"] for g in live.sd) == jobs  # type: ignore[index]
    targets = live.prometheus.active_targets()
    assert sorted(target["labels"]["job"] for target in targets) == jobs
    assert all(target["health"] == "up" for target in targets), targets
    ingress = next(target for target in targets if target["labels"]["job"] == "glmserve-ingress")
    assert ingress["scrapeUrl"] == f"{live.stack.root}/metrics"


def test_every_endpoint_passes_promtool(live: Live) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/install.sh --test installs it (apt package prometheus)"
    for job, text in live.expositions.items():
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
        problems = result.stdout + result.stderr
        if job in OWNED_JOBS:
            assert result.returncode == 0 and not problems.strip(), f"{job}: {problems}"
        else:
            assert "parsing error" not in problems and result.returncode in (0, 3), f"{job}: {problems[-2000:]}"
            assert not re.search(r"^glmserve_", problems, re.M), f"{job} exports glmserve names that fail lint"


QUERIES = [
    pytest.param(target.expr, id=f"{dashboard.uid}/{panel.title}/{chr(ord('A') + n)}")
    for dashboard in DASHBOARDS
    for panel in dashboard.panels
    for n, target in enumerate(panel.targets)
]


@pytest.mark.parametrize("expr", QUERIES)
def test_panel_query_returns_data(live: Live, expr: str) -> None:
    missing = {m.component(SPECS[name]) for name in metric_names(expr)} - live.running
    if missing:
        pytest.skip(f"not running in the local stack: {', '.join(sorted(missing))} (no endpoint exports its metrics)")
    features = {SPECS[name].only_with for name in metric_names(expr)} - {""}
    if features:
        pytest.skip(f"the local stack runs no {', '.join(sorted(features))}, without which these metrics do not exist")
    result = live.prometheus.query(as_sent(expr))
    values = [float(sample["value"][1]) for sample in result]
    assert any(not math.isnan(v) for v in values), f"no data: {as_sent(expr)} -> {result}"


def test_one_trace_per_request_through_the_router_and_the_engines(live: Live) -> None:
    """ingress request -> route (ingress) -> route (router), and -> prefill (when the router chose
    remote prefill) -> the prefill engine's vLLM span, -> decode -> the decode engine's vLLM span;
    the router's choice is on the request span."""
    roots = _acme_roots(live.spans)
    assert len(roots) == live.requests and len({r.trace_id for r in roots}) == len(roots)
    by_parent: dict[str, list[ReceivedSpan]] = {}
    for span in live.spans:
        by_parent.setdefault(span.parent_id, []).append(span)
    for root in roots:
        assert root.service == "glmserve-ingress" and root.kind == "SPAN_KIND_SERVER" and not root.error
        assert root.attributes[t.MODEL] == MODEL and root.attributes[t.PLAN] == "pro"
        assert root.attributes[t.HTTP_STATUS] == 200
        assert root.attributes[t.INPUT_TOKENS] > 0 and root.attributes[t.OUTPUT_TOKENS] > 0
        assert t.CACHED_TOKENS in root.attributes
        children = {c.name: c for c in by_parent[root.span_id]}
        remote_prefill = t.PREFILL_WORKER in root.attributes
        assert sorted(children) == (["decode", "prefill", "route"] if remote_prefill else ["decode", "route"])
        assert all(c.trace_id == root.trace_id and c.kind == "SPAN_KIND_CLIENT" for c in children.values())
        [router] = by_parent[children["route"].span_id]
        assert (router.service, router.name, router.kind) == ("glmserve-router", "route", "SPAN_KIND_SERVER")
        assert router.trace_id == root.trace_id
        assert router.attributes[t.DECODE_WORKER] == root.attributes[t.DECODE_WORKER]
        assert router.attributes.get(t.PREFILL_WORKER) == root.attributes.get(t.PREFILL_WORKER)
        # vLLM's own request span, in the engine the ingress called, under that call's span.
        for stage in children.keys() - {"route"}:
            [engine] = by_parent[children[stage].span_id]
            assert (engine.service, engine.name, engine.kind) == (
                f"glmserve-{stage}",
                "llm_request",
                "SPAN_KIND_SERVER",
            )
            assert engine.trace_id == root.trace_id
            assert engine.attributes["gen_ai.usage.prompt_tokens"] == root.attributes[t.INPUT_TOKENS]
    assert any(t.PREFILL_WORKER in r.attributes for r in roots), "the router never chose remote prefill"
    # A request its plan refused is traced too: the router refused it, and no engine was called.
    refused = [s for s in live.spans if s.attributes.get(t.HTTP_STATUS) == 429]
    assert refused and all(s.attributes[t.PLAN] == "free" for s in refused)
    assert all({c.name for c in by_parent.get(s.span_id, [])} == {"route"} for s in refused)


def test_requests_are_counted_per_plan_and_named_tenant(live: Live) -> None:
    """acme is named in metrics_tenants; hobby, not named, counts as "other"."""
    counted = live.prometheus.query(f"sum by (plan, tenant, status) ({m.INGRESS_REQUESTS.name})")
    by_labels = {tuple(s["metric"][k] for k in ("plan", "tenant", "status")): float(s["value"][1]) for s in counted}
    assert by_labels[("pro", "acme", "200")] == live.requests
    assert by_labels[("free", "other", "429")] >= 1
    assert {tenant for _, tenant, _ in by_labels} == {"acme", "other"}
