"""OpenTelemetry traces: one trace per request, from the ingress through the router to the engines.

Off by default. A process exports spans over OTLP when the SDK's own variables name an endpoint
(`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`), with the
protocol of `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` (`http/protobuf`, the default, or `grpc`);
`OTEL_SDK_DISABLED=true` wins. Headers, timeouts and batching follow the other `OTEL_*` variables.
The context crosses gRPC calls as W3C `traceparent`/`tracestate` metadata, and reaches the engines
(vLLM's own request spans) as headers of the Serve call.

A client's own `traceparent` is not trusted by default: the ingress starts a new trace (sampled by
our sampler, not by the client's flag) and links the client's span to it. `GLMSERVE_TRACE_TRUST_CLIENT=true`
continues the client's trace instead, for clients inside the same trust boundary.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link

from glmserve.common.errors import ConfigError
from glmserve.common.observability import TRUST_CLIENT

INSTRUMENTATION = "glmserve"

# Span attributes: OpenTelemetry's GenAI conventions where they have a name, glmserve.* otherwise.
OPERATION = "gen_ai.operation.name"
MODEL = "gen_ai.request.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHED_TOKENS = "glmserve.usage.cached_tokens"
PLAN = "glmserve.tenant.plan"
TENANT = "glmserve.tenant.id"
HTTP_STATUS = "http.response.status_code"
# The workers glmserve's router chose, and the prompt tokens it expected them to hold.
PREFILL_WORKER = "glmserve.worker.prefill"
DECODE_WORKER = "glmserve.worker.decode"
EXPECTED_CACHED_TOKENS = "glmserve.route.expected_cached_tokens"
ROUTE_POLICY = "glmserve.route.policy"
PREFILL_FALLBACK = "glmserve.prefill.fallback"
# NIXL's id of the prefill engine whose KV the decode engine pulled.
KV_SOURCE_ENGINE = "glmserve.kv.source_engine"


def traces_protocol(env: Mapping[str, str] = os.environ) -> str:
    return env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"


def traces_endpoint(env: Mapping[str, str] = os.environ) -> str | None:
    """Where spans go, as the SDK resolves it, or None: tracing is off. vLLM takes only this URL."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if endpoint := env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return endpoint
    if base := env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return base if traces_protocol(env) == "grpc" else base.rstrip("/") + "/v1/traces"
    return None


def otlp_exporter(env: Mapping[str, str] = os.environ) -> SpanExporter | None:
    """The exporter the environment asks for, or None: tracing is off."""
    if traces_endpoint(env) is None:
        return None
    protocol = traces_protocol(env)
    # The exporters read the endpoint, headers and timeout from the same variables.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ValueError(f"OTLP protocol {protocol!r} is not supported; use http/protobuf or grpc")


def tracer(service: str, exporter: SpanExporter | None = None) -> trace.Tracer:
    """`service`'s tracer: exporting to `exporter` (tests) or to the environment's OTLP endpoint,
    else a no-op tracer whose spans cost next to nothing.

    Each call builds its own provider rather than setting the global one, so a library that
    installs a provider in the same process (Ray, vLLM) neither replaces nor receives ours.
    """
    exporter = exporter or otlp_exporter()
    if exporter is None:
        return trace.NoOpTracer()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider.get_tracer(INSTRUMENTATION)


def headers(context: Context | None = None) -> dict[str, str]:
    """`context`'s trace (default: the current one) as W3C `traceparent`/`tracestate` headers;
    empty when there is no recording span (tracing off)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def grpc_metadata(context: Context | None = None) -> list[tuple[str, str]]:
    """`context`'s trace (default: the current one) as gRPC metadata for an outgoing call."""
    return sorted(headers(context).items())


def context_from_grpc(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The caller's trace context from an incoming call's metadata (empty when it sent none), to
    parent the server's span: `tracer.start_as_current_span(name, context=...)`."""
    # Binary (`-bin`) metadata never carries W3C trace context.
    return propagate.extract({key: value for key, value in metadata or () if isinstance(value, str)})


def trusts_client(env: Mapping[str, str] = os.environ) -> bool:
    value = env.get(TRUST_CLIENT, "false").strip().lower()
    if value not in ("true", "false"):
        raise ConfigError(f"{TRUST_CLIENT} must be true or false, not {value!r}")
    return value == "true"


def server_parent(incoming: Mapping[str, str], trust_client: bool) -> tuple[Context, list[Link]]:
    """The parent context and links of a server span for a request with these headers: the client's
    trace when trusted, else a new root linked to the client's span (if it sent one)."""
    client = propagate.extract(incoming)
    if trust_client:
        return client, []
    sent = trace.get_current_span(client).get_span_context()
    return Context(), [Link(sent)] if sent.is_valid else []
