"""The ingress's per-request telemetry: metrics by plan and (bounded) tenant, and the span tree."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest

from glmserve.common import tracing as t
from glmserve.serving.ingress.metrics import IngressMetrics
from glmserve.serving.ingress.responses import Usage

MODEL = "glm-4.6-tiny"


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def metrics(spans: InMemorySpanExporter) -> IngressMetrics:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return IngressMetrics(tracer=provider.get_tracer("test"), tenants=["acme"])


def _tree(spans: InMemorySpanExporter) -> tuple[ReadableSpan, list[ReadableSpan]]:
    finished = spans.get_finished_spans()
    [root] = [s for s in finished if s.parent is None]
    assert root.context is not None
    children = [s for s in finished if s.parent is not None]
    assert all(c.parent is not None and c.parent.span_id == root.context.span_id for c in children)
    assert {s.context.trace_id for s in finished if s.context} == {root.context.trace_id}
    return root, children


def test_routed_disaggregated_request_is_one_trace_with_route_prefill_and_decode(
    metrics: IngressMetrics, spans: InMemorySpanExporter
) -> None:
    timer = metrics.start("chat", MODEL, plan="pro", tenant="acme")
    timer.begin("route")
    timer.routed("prefill-0", "decode-1", 32, "precise")
    timer.begin("prefill")
    timer.prefilled(None, "nixl-engine-0")
    timer.begin("decode")
    timer.tokens_sent(1)
    timer.tokens_sent(3)
    timer.finish(200, Usage(prompt_tokens=40, completion_tokens=4, cached_tokens=32))

    root, children = _tree(spans)
    assert root.name == f"chat {MODEL}" and root.kind == trace.SpanKind.SERVER
    assert root.attributes is not None
    keys = (t.MODEL, t.PLAN, t.TENANT, t.PREFILL_WORKER, t.DECODE_WORKER, t.EXPECTED_CACHED_TOKENS, t.CACHED_TOKENS)
    assert {k: root.attributes[k] for k in keys} == {
        t.MODEL: MODEL,
        t.PLAN: "pro",
        t.TENANT: "acme",
        t.PREFILL_WORKER: "prefill-0",
        t.DECODE_WORKER: "decode-1",
        t.EXPECTED_CACHED_TOKENS: 32,
        t.CACHED_TOKENS: 32,
    }
    assert (root.attributes[t.INPUT_TOKENS], root.attributes[t.OUTPUT_TOKENS]) == (40, 4)
    assert [(c.name, c.kind) for c in sorted(children, key=lambda s: s.start_time or 0)] == [
        ("route", trace.SpanKind.CLIENT),
        ("prefill", trace.SpanKind.CLIENT),
        ("decode", trace.SpanKind.CLIENT),
    ]
    route, prefill, decode = sorted(children, key=lambda s: s.start_time or 0)
    assert route.attributes is not None and route.attributes[t.ROUTE_POLICY] == "precise"
    assert prefill.attributes is not None and prefill.attributes[t.KV_SOURCE_ENGINE] == "nixl-engine-0"
    assert prefill.end_time is not None and decode.start_time is not None and prefill.end_time <= decode.start_time
    assert decode.end_time is not None and root.end_time is not None and decode.end_time <= root.end_time

    registry = metrics.registry
    labels = {"endpoint": "chat", "model": MODEL, "status": "200", "plan": "pro", "tenant": "acme"}
    assert registry.get_sample_value("glmserve_ingress_requests_total", labels) == 1
    assert (
        registry.get_sample_value("glmserve_ingress_cached_prompt_tokens_total", {"model": MODEL, "plan": "pro"}) == 32
    )
    assert registry.get_sample_value("glmserve_ingress_remote_prefill_duration_seconds_count", {"model": MODEL}) == 1
    assert registry.get_sample_value("glmserve_ingress_inter_token_latency_seconds_count", {"model": MODEL}) == 3
    # Every fallback reason reads 0 from the first remote prefill on.
    for reason in ("error", "engine_error", "no_kv_params"):
        assert (
            registry.get_sample_value("glmserve_ingress_prefill_fallbacks_total", {"model": MODEL, "reason": reason})
            == 0
        )
    assert registry.get_sample_value("glmserve_ingress_requests_in_flight", {"model": MODEL, "plan": "pro"}) == 0


def test_prefill_fallback_and_failure_are_recorded(metrics: IngressMetrics, spans: InMemorySpanExporter) -> None:
    timer = metrics.start("completions", MODEL, plan="free", tenant="someone")
    timer.begin("prefill")
    timer.prefilled("engine_error", None)
    timer.begin("decode")
    timer.finish(500)

    root, children = _tree(spans)
    assert root.name == f"text_completion {MODEL}"
    assert not root.status.is_ok and all(not c.status.is_ok for c in children if c.name == "decode")
    [prefill] = [c for c in children if c.name == "prefill"]
    assert prefill.attributes is not None and prefill.attributes[t.PREFILL_FALLBACK] == "engine_error"
    assert root.attributes is not None and t.PREFILL_WORKER not in root.attributes
    registry = metrics.registry
    fallback = {"model": MODEL, "reason": "engine_error"}
    assert registry.get_sample_value("glmserve_ingress_prefill_fallbacks_total", fallback) == 1
    # A tenant not named in `tenants` is counted as "other": the label's values stay bounded.
    labels = {"endpoint": "completions", "model": MODEL, "status": "500", "plan": "free", "tenant": "other"}
    assert registry.get_sample_value("glmserve_ingress_requests_total", labels) == 1
    assert registry.get_sample_value("glmserve_ingress_remote_prefill_duration_seconds_count", {"model": MODEL}) is None


def test_colocated_request_has_one_generate_stage(metrics: IngressMetrics, spans: InMemorySpanExporter) -> None:
    timer = metrics.start("chat", MODEL, plan="open", tenant="default")
    timer.begin("generate")
    timer.tokens_sent(1)
    timer.finish(200, Usage(prompt_tokens=5, completion_tokens=1))
    timer.finish(499)  # a second end (the client left as the response completed) changes nothing
    root, children = _tree(spans)
    assert [c.name for c in children] == ["generate"]
    assert root.attributes is not None and root.attributes[t.HTTP_STATUS] == 200


def test_exposition_passes_promtool(metrics: IngressMetrics) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/install.sh --test installs it (apt package prometheus)")
    timer = metrics.start("chat", MODEL, plan="pro", tenant="acme")
    timer.begin("prefill")
    timer.prefilled("error", None)
    timer.begin("decode")
    timer.tokens_sent(2)
    timer.finish(200, Usage(prompt_tokens=4, completion_tokens=2, cached_tokens=1))
    result = subprocess.run(
        [promtool, "check", "metrics"], input=generate_latest(metrics.registry), capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = {"traceparent": f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"}


def test_a_clients_traceparent_is_linked_not_continued(spans: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    metrics = IngressMetrics(tracer=provider.get_tracer("test"))
    metrics.start("chat", MODEL, plan="pro", tenant="acme", headers=CLIENT_PARENT).finish(200, Usage())
    [root] = spans.get_finished_spans()
    assert root.parent is None and root.context is not None
    assert format(root.context.trace_id, "032x") != CLIENT_TRACE
    [link] = root.links
    assert (format(link.context.trace_id, "032x"), format(link.context.span_id, "016x")) == (
        CLIENT_TRACE,
        "b7ad6b7169203331",
    )


def test_a_trusted_clients_traceparent_is_continued(spans: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    metrics = IngressMetrics(tracer=provider.get_tracer("test"), trust_client_trace=True)
    metrics.start("chat", MODEL, plan="pro", tenant="acme", headers=CLIENT_PARENT).finish(200, Usage())
    [root] = spans.get_finished_spans()
    assert root.parent is not None and format(root.parent.span_id, "016x") == "b7ad6b7169203331"
    assert root.context is not None and format(root.context.trace_id, "032x") == CLIENT_TRACE
    assert not root.links
