"""The `ModelDeployment`'s `spec.observability`: where its pods send OpenTelemetry traces.

The operator renders it into the OpenTelemetry SDK's own `OTEL_*` variables on every pod (Ray head,
ingress, engines, router); `glmserve.common.tracing` and vLLM read them there.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from glmserve.common.resource import Spec, cel, validations

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
SecretName = Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]
# The ingress's switch for trusting a client's traceparent (not an OpenTelemetry variable).
TRUST_CLIENT = "GLMSERVE_TRACE_TRUST_CLIENT"
MSG_TLS_HTTPS = "tracing.tls needs an https:// endpoint"
# vLLM's engines export over gRPC with TLS switched off (vllm.tracing.otel.get_span_exporter).
MSG_GRPC_PLAINTEXT = (
    "protocol grpc needs an http:// endpoint (vLLM's engines export gRPC without TLS); use http/protobuf"
)


class SecretKeySelector(Spec):
    """A key of a Secret in the ModelDeployment's namespace."""

    name: SecretName = Field(description="the Secret's name")
    key: str = Field(pattern=SECRET_KEY, max_length=253, description="the Secret's data key")


class TracingTls(Spec):
    """TLS to the collector beyond the image's public CAs."""

    ca_secret_ref: SecretKeySelector | None = Field(
        None, description="a Secret key holding the PEM CA bundle that signed the collector's certificate"
    )
    client_secret_name: SecretName | None = Field(
        None, description="a kubernetes.io/tls Secret (tls.crt, tls.key) the pods present to the collector (mutual TLS)"
    )


class TracingSpec(Spec):
    """OTLP trace export of every pod of the deployment: one trace per request, from the ingress
    through the router to the prefill and decode engines."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("!has(self.tls) || self.endpoint.startsWith('https://')", MSG_TLS_HTTPS),
            cel("self.protocol != 'grpc' || self.endpoint.startsWith('http://')", MSG_GRPC_PLAINTEXT),
        )
    )

    endpoint: str = Field(
        pattern=r"^https?://[^/\s]+(/\S*)?$",
        max_length=2048,
        description="the collector's OTLP traces URL, e.g. http://otel-collector.observability:4318/v1/traces",
    )
    protocol: Literal["http/protobuf", "grpc"] = Field("http/protobuf", description="OTLP transport")
    headers_secret_ref: SecretKeySelector | None = Field(
        None,
        description="a Secret key holding export headers as OTEL_EXPORTER_OTLP_HEADERS has them (k1=v1,k2=v2), "
        "e.g. the collector's API token",
    )
    tls: TracingTls | None = Field(None, description="CA and client certificate for an https:// endpoint")
    sampling_ratio: float = Field(
        1.0, ge=0, le=1, description="share of new traces recorded; a recorded trace is recorded in every pod"
    )
    trust_client_trace_context: bool = Field(
        False,
        description="continue a client's W3C traceparent (only for clients inside your trust boundary); "
        "default: a new trace that links to the client's span",
    )

    @model_validator(mode="after")
    def _transport(self) -> Self:
        if self.tls is not None and not self.endpoint.startswith("https://"):
            raise ValueError(MSG_TLS_HTTPS)
        if self.protocol == "grpc" and not self.endpoint.startswith("http://"):
            raise ValueError(MSG_GRPC_PLAINTEXT)
        return self


class ObservabilitySpec(Spec):
    """What the deployment's pods report beyond metrics."""

    tracing: TracingSpec | None = Field(None, description="OpenTelemetry traces; default: off")
