"""A ModelDeployment's `spec.observability.tracing` as every pod's environment and mounts.

The OpenTelemetry SDK's own variables, which `glmserve.common.tracing` (ingress, router) and vLLM
(engines) read; the sampler is parent-based, so a trace the ingress records is recorded everywhere.
"""

from __future__ import annotations

from typing import Any

from glmserve.common.observability import TRUST_CLIENT, TracingSpec

OTLP_TLS_DIR = "/etc/glmserve/otlp"
CA_FILE = f"{OTLP_TLS_DIR}/ca/ca.crt"
CLIENT_DIR = f"{OTLP_TLS_DIR}/client"


def tracing_env(spec: TracingSpec | None) -> list[dict[str, Any]]:
    if spec is None:
        return []
    env: list[dict[str, Any]] = [
        {"name": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "value": spec.endpoint},
        {"name": "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "value": spec.protocol},
        {"name": "OTEL_TRACES_SAMPLER", "value": "parentbased_traceidratio"},
        {"name": "OTEL_TRACES_SAMPLER_ARG", "value": repr(spec.sampling_ratio)},
        {"name": TRUST_CLIENT, "value": str(spec.trust_client_trace_context).lower()},
    ]
    if ref := spec.headers_secret_ref:
        env.append(
            {"name": "OTEL_EXPORTER_OTLP_HEADERS", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    if spec.tls and spec.tls.ca_secret_ref:
        env.append({"name": "OTEL_EXPORTER_OTLP_CERTIFICATE", "value": CA_FILE})
    if spec.tls and spec.tls.client_secret_name:
        env += [
            {"name": "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "value": f"{CLIENT_DIR}/tls.crt"},
            {"name": "OTEL_EXPORTER_OTLP_CLIENT_KEY", "value": f"{CLIENT_DIR}/tls.key"},
        ]
    return env


def tracing_volumes(spec: TracingSpec | None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(volume, mount) pairs of the TLS files `tracing_env` names."""
    tls = spec.tls if spec else None
    pairs = []
    if tls and (ca := tls.ca_secret_ref):
        volume = {"name": "otlp-ca", "secret": {"secretName": ca.name, "items": [{"key": ca.key, "path": "ca.crt"}]}}
        pairs.append((volume, {"name": "otlp-ca", "mountPath": f"{OTLP_TLS_DIR}/ca", "readOnly": True}))
    if tls and tls.client_secret_name:
        volume = {"name": "otlp-client", "secret": {"secretName": tls.client_secret_name}}
        pairs.append((volume, {"name": "otlp-client", "mountPath": CLIENT_DIR, "readOnly": True}))
    return pairs
