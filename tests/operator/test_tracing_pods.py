"""`spec.observability.tracing` reaches every pod: the Ray head, the ingress and engine groups and
the router, as the OpenTelemetry SDK's variables (headers from a Secret, TLS files mounted), and the
manifests still validate strictly; without it no pod names a collector."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from glmserve.common.observability import ObservabilitySpec, TracingSpec
from glmserve.common.tenancy import Plan, TenantsFile
from glmserve.common.tracing import otlp_exporter, traces_endpoint, trusts_client
from glmserve.operator.build.children import build_children
from tests.operator.conftest import example_inputs
from tests.operator.k8s_checks import CustomResourceSchemas, manifest_problems

ENDPOINT = "https://otel-collector.observability:4318/v1/traces"
TRACING = TracingSpec.model_validate(
    {
        "endpoint": ENDPOINT,
        "headersSecretRef": {"name": "otlp-auth", "key": "headers"},
        "tls": {"caSecretRef": {"name": "otlp-ca", "key": "bundle.pem"}, "clientSecretName": "otlp-client"},
        "samplingRatio": 0.25,
    }
)


def _children(tracing: TracingSpec | None) -> list[dict[str, Any]]:
    inputs = example_inputs()
    spec = inputs.spec.model_copy(update={"observability": ObservabilitySpec(tracing=tracing)})
    return build_children(replace(inputs, spec=spec), TenantsFile(plans=[Plan(name="pro")]), None)


def _pods(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod spec by what runs in it."""
    cluster = next(c for c in children if c["kind"] == "RayService")["spec"]["rayClusterConfig"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    pods |= {g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]}
    router = next(c for c in children if c["kind"] == "Deployment")
    pods["router"] = router["spec"]["template"]["spec"]
    return pods


def test_every_pod_exports_to_the_collector(schemas: CustomResourceSchemas) -> None:
    children = _children(TRACING)
    assert [p for child in children for p in manifest_problems(child, schemas)] == []
    pods = _pods(children)
    assert set(pods) == {"head", "ingress", "prefill", "decode", "router"}
    for role, pod in pods.items():
        [container] = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        plain = {name: e["value"] for name, e in env.items() if "value" in e}
        assert env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"] == {
            "secretKeyRef": {"name": "otlp-auth", "key": "headers"}
        }, role
        # What the processes in the pod make of it (glmserve.common.tracing; vLLM takes the endpoint).
        assert traces_endpoint(plain) == ENDPOINT and otlp_exporter(plain) is not None
        assert not trusts_client(plain)
        assert (plain["OTEL_TRACES_SAMPLER"], plain["OTEL_TRACES_SAMPLER_ARG"]) == ("parentbased_traceidratio", "0.25")
        # The TLS files the variables name are mounted from the Secrets.
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounted = {
            f"{m['mountPath']}/{item['path']}": (volumes[m["name"]]["secret"]["secretName"], item["key"])
            for m in container["volumeMounts"]
            if m["name"] in volumes and "secret" in volumes[m["name"]]
            for item in volumes[m["name"]]["secret"].get("items")
            or [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]
        }
        assert mounted[plain["OTEL_EXPORTER_OTLP_CERTIFICATE"]] == ("otlp-ca", "bundle.pem"), role
        assert mounted[plain["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"]] == ("otlp-client", "tls.crt"), role
        assert mounted[plain["OTEL_EXPORTER_OTLP_CLIENT_KEY"]] == ("otlp-client", "tls.key"), role


def test_no_pod_names_a_collector_by_default() -> None:
    for role, pod in _pods(_children(None)).items():
        [container] = pod["containers"]
        names = {e["name"] for e in container.get("env", [])}
        assert not {n for n in names if n.startswith("OTEL_")}, role
        assert not [v for v in pod.get("volumes", []) if v["name"].startswith("otlp")], role
