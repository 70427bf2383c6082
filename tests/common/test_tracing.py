"""glmserve.common.tracing: off by default, OTLP when configured, context carried over real gRPC calls."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from glmserve.common import tracing
from glmserve.common.errors import ConfigError
from glmserve.common.observability import TRUST_CLIENT
from tests.helpers.otlp import otlp_receiver


def test_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(variable, raising=False)
    assert isinstance(tracing.tracer("glmserve-test"), trace.NoOpTracer)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://collector:4318/v1/metrics"},
    ],
    ids=["sdk-disabled", "metrics-only"],
)
def test_stays_off_unless_traces_have_an_endpoint(env: dict[str, str]) -> None:
    assert tracing.otlp_exporter(env) is None


def test_grpc_protocol_and_unknown_protocol() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert isinstance(tracing.otlp_exporter(env), GrpcExporter)
    with pytest.raises(ValueError, match="http/json"):
        tracing.otlp_exporter({**env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"})


def test_spans_reach_the_configured_otlp_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with otlp_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        tracer = tracing.tracer("glmserve-test")
        with tracer.start_as_current_span("work", attributes={tracing.PLAN: "pro"}):
            pass
        [span] = receiver.wait_until(lambda spans: len(spans) >= 1)
    assert (span.service, span.name, span.attributes) == ("glmserve-test", "work", {tracing.PLAN: "pro"})


def _in_memory() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


async def _route_over_grpc(client_tracer: trace.Tracer, server_tracer: trace.Tracer) -> None:
    """One unary call to a real gRPC server: the client sends its trace as metadata, the server
    parents its span on it, as the ingress and the router do."""

    async def route(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        parent = tracing.context_from_grpc(context.invocation_metadata())
        with server_tracer.start_as_current_span("route", context=parent, kind=trace.SpanKind.SERVER):
            return request

    handler = grpc.method_handlers_generic_handler(
        "glmserve.test.Router", {"Route": grpc.unary_unary_rpc_method_handler(route)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/glmserve.test.Router/Route")
            with client_tracer.start_as_current_span("request", kind=trace.SpanKind.CLIENT):
                assert await call(b"prompt", metadata=tracing.grpc_metadata()) == b"prompt"
            # Without a trace, the server starts its own.
            assert await call(b"untraced", metadata=tracing.grpc_metadata()) == b"untraced"
    finally:
        await server.stop(None)


def test_trace_context_crosses_a_grpc_call() -> None:
    client_tracer, client_spans = _in_memory()
    server_tracer, server_spans = _in_memory()
    asyncio.run(_route_over_grpc(client_tracer, server_tracer))
    [request] = client_spans.get_finished_spans()
    traced, untraced = server_spans.get_finished_spans()
    assert request.context is not None and traced.context is not None and untraced.context is not None
    assert traced.context.trace_id == request.context.trace_id
    assert traced.parent is not None and traced.parent.span_id == request.context.span_id
    assert traced.parent.is_remote
    assert untraced.parent is None and untraced.context.trace_id != request.context.trace_id


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c:4318/v1/traces"}, "https://c:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4318/"}, "https://c:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http://c:4317"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, None),
    ],
)
def test_the_engines_endpoint_is_the_sdks(env: dict[str, str], endpoint: str | None) -> None:
    """vLLM takes one URL and appends nothing: it gets the traces endpoint the SDK would use."""
    assert tracing.traces_endpoint(env) == endpoint


def test_trusting_clients_is_validated() -> None:
    assert not tracing.trusts_client({})
    assert tracing.trusts_client({TRUST_CLIENT: "True"})
    with pytest.raises(ConfigError, match="GLMSERVE_TRACE_TRUST_CLIENT must be true or false"):
        tracing.trusts_client({TRUST_CLIENT: "yes"})
