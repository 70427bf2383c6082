"""Our CRDs: structural, documented, in sync with the chart; examples pass them and bad specs fail
with the intended message, both at admission (schema + CEL) and in the pydantic models."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from glmserve.common.deployment import ModelDeploymentSpec
from glmserve.common.nodegroup import NodeGroupSpec
from glmserve.common.tenancy import PlanSpec, TenantSpec
from glmserve.operator.crds import RESOURCES, CustomResource, build_crd, crd_yaml
from tests.operator.conftest import CLUSTER_TINY, REPO_ROOT, load_examples
from tests.operator.k8s_checks import CustomResourceSchemas, builtin_problems, manifest_problems

CHART_CRDS = REPO_ROOT / "charts" / "glmserve" / "crds"
SPEC_MODELS: dict[str, type[BaseModel]] = {
    "NodeGroup": NodeGroupSpec,
    "ModelDeployment": ModelDeploymentSpec,
    "Plan": PlanSpec,
    "Tenant": TenantSpec,
}
FORBIDDEN = {"$ref", "$defs", "title", "const", "patternProperties", "propertyNames", "oneOf", "allOf", "anyOf"}


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _schema(resource: CustomResource) -> dict[str, Any]:
    return build_crd(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_crd_is_a_valid_structural_crd(resource: CustomResource) -> None:
    assert builtin_problems(build_crd(resource)) == []
    for path, node in _nodes(_schema(resource)):
        assert "type" in node, f"{path} has no type (structural schemas need one everywhere)"
        assert not FORBIDDEN & node.keys(), f"{path} uses {FORBIDDEN & node.keys()}"
        assert node.get("additionalProperties") is not False, f"{path}: additionalProperties false is not structural"


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_every_field_has_a_description_for_kubectl_explain(resource: CustomResource) -> None:
    undocumented = [path for path, node in _nodes(_schema(resource)) if path and not node.get("description")]
    # Map values and list items are explained by their field.
    assert [p for p in undocumented if not p.endswith(("{}", "[]"))] == []


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_printer_columns_point_at_fields(resource: CustomResource) -> None:
    schema = _schema(resource)
    for column in build_crd(resource)["spec"]["versions"][0]["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".metadata."):
            continue  # ObjectMeta is the API server's
        node = schema
        for part in re.sub(r"\[\?\(.*?\)\]", "", column["jsonPath"]).split(".")[1:]:
            assert part in (node.get("properties") or {}), f"{column['name']}: {column['jsonPath']} has no {part}"
            node = node["properties"][part]
            node = node.get("items", node)


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_chart_carries_the_generated_crds(resource: CustomResource) -> None:
    path = CHART_CRDS / f"{resource.crd_name}.yaml"
    assert path.read_text() == crd_yaml(resource), f"regenerate: python -m glmserve.operator.crds {CHART_CRDS}"


def test_status_subresources() -> None:
    with_status = {r.kind for r in RESOURCES if "subresources" in build_crd(r)["spec"]["versions"][0]}
    assert with_status == {"NodeGroup", "ModelDeployment", "Tenant"}


def _examples() -> dict[str, dict[str, Any]]:
    """examples/ and the CPU development deployment's objects (its Secrets too), by `Kind/name`."""
    return {**load_examples(), **load_examples(CLUSTER_TINY)}


@pytest.mark.parametrize("key", sorted(_examples()))
def test_examples_pass_admission_and_the_models(schemas: CustomResourceSchemas, key: str) -> None:
    obj = _examples()[key]
    assert manifest_problems(obj, schemas) == []
    if obj["kind"] in SPEC_MODELS:
        SPEC_MODELS[obj["kind"]].model_validate(obj["spec"])


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = obj
        for part in parents:
            node = node[part]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value

    return mutate


# (example, mutation, message both admission and the model give)
INVALID = [
    ("NodeGroup/h100", _set("spec.minNodes", 5), "minNodes must not exceed maxNodes"),
    ("NodeGroup/h100", _set("spec.nodeClassRef", None), "provisioner karpenter needs nodeClassRef"),
    ("NodeGroup/h100", _set("spec.instanceTypes", []), "provisioner karpenter needs instanceTypes"),
    ("NodeGroup/h100", _set("spec.minNodes", 2), "with provisioner karpenter, minNodes must be 0"),
    ("NodeGroup/h100", _set("spec.provisioner", "static"), "nodeClassRef applies to provisioner karpenter only"),
    ("NodeGroup/h100", _set("spec.labels", {"glmserve.io/pool": "x"}), "label keys under glmserve.io/ are reserved"),
    ("ModelDeployment/glm-46", _set("spec.decode.replicas", 2), "set replicas or autoscaling, not both"),
    (
        "ModelDeployment/glm-46",
        _set("spec.decode.autoscaling", {"minReplicas": 3, "maxReplicas": 2}),
        "minReplicas must not exceed maxReplicas",
    ),
    (
        "ModelDeployment/glm-46",
        _set("spec.decode.autoscaling", {"maxReplicas": 4, "scaleUpAt": 0.8, "scaleDownAt": 0.8}),
        "scaleDownAt must be below scaleUpAt",
    ),
    (
        "ModelDeployment/glm-46",
        _set("spec.prefill.parallelism", {"tensor": 8, "data": 2, "expert": 8}),
        "expert must be 1 (experts tensor-sharded) or tensor x data",
    ),
    (
        "ModelDeployment/glm-46",
        _set("spec.observability", {"tracing": {"endpoint": "http://c:4318/v1/traces", "tls": {}}}),
        "tracing.tls needs an https:// endpoint",
    ),
    (
        "ModelDeployment/glm-46",
        _set("spec.observability", {"tracing": {"endpoint": "https://c:4317", "protocol": "grpc"}}),
        "protocol grpc needs an http:// endpoint",
    ),
    ("NodeGroup/cpu-tiny", _set("spec.gpu", "H100"), "set exactly one of gpu (GPU nodes) and cpu (CPU-only nodes)"),
    ("NodeGroup/cpu-tiny", _set("spec.cpu", None), "set exactly one of gpu (GPU nodes) and cpu (CPU-only nodes)"),
    ("NodeGroup/cpu-tiny", _set("spec.cpu.enginesPerNode", 2), "cpu.cores must be a multiple of cpu.enginesPerNode"),
    (
        "ModelDeployment/tiny",
        _set("spec.model.source", None),
        "glm-4.6-tiny has no published weights: set model.source to the directory",
    ),
    ("ModelDeployment/glm-46", _set("spec.router.shards", 2), "router.shards must not exceed the replicas"),
]
# Rejected by the OpenAPI schema at admission (type, enum, pattern, bounds) and by pydantic.
SCHEMA_ONLY = [
    ("NodeGroup/h100", _set("spec.gpu", "A100"), "'A100' is not one of ['H100', 'H200']", "Input should be 'H100'"),
    ("NodeGroup/h100", _set("spec.gpusPerNode", 3), "3 is not one of [1, 2, 4, 8]", "Input should be 1, 2, 4 or 8"),
    ("NodeGroup/h100", _set("spec.maxNodes", 0), "0 is less than the minimum of 1", "greater than or equal to 1"),
    ("NodeGroup/cpu-tiny", _set("spec.cpu.cores", 0), "0 is less than the minimum of 1", "greater than or equal to 1"),
    (
        "NodeGroup/cpu-tiny",
        _set("spec.cpu.memoryGiB", "3Gi"),
        "'3Gi' is not of type 'number'",
        "Input should be a valid number",
    ),
    ("ModelDeployment/glm-46", _set("spec.model.name", "llama"), "'llama' is not one of", "unknown model 'llama'"),
    (
        "ModelDeployment/glm-46",
        _set("spec.prefill.extra", 1),
        "'extra' was unexpected",
        "Extra inputs are not permitted",
    ),
    (
        "ModelDeployment/glm-46",
        _set("spec.observability", {"tracing": {"endpoint": "http://c:4318", "samplingRatio": 2}}),
        "2 is greater than the maximum of 1",
        "less than or equal to 1",
    ),
    (
        "ModelDeployment/glm-46",
        _set("spec.observability", {"tracing": {"endpoint": "collector:4318"}}),
        "'collector:4318' does not match",
        "String should match pattern",
    ),
    (
        "ModelDeployment/tiny",
        _set("spec.gcsFaultTolerance", {"redisAddress": "redis-without-port"}),
        "'redis-without-port' does not match",
        "String should match pattern",
    ),
    (
        "ModelDeployment/glm-46",
        _set("spec.decode.autoscaling", {"minReplicas": -1, "maxReplicas": 2}),
        "-1 is less than the minimum of 0",
        "greater than or equal to 0",
    ),
    (
        "ModelDeployment/glm-46",
        _set("spec.decode.autoscaling", {"maxReplicas": 2, "itlSloSeconds": 0}),
        "0 is less than the minimum of 0.001",
        "greater than or equal to 0.001",
    ),
    ("Plan/free", _set("spec.priority", "gold"), "'gold' is not one of", "Input should be 'batch'"),
    ("Tenant/acme", _set("spec.apiKeys", []), "should be non-empty", "at least 1 item"),
    (
        "ModelDeployment/glm-46",
        _set("spec.images", {"serving": "Registry.example/Serving:1"}),
        "'Registry.example/Serving:1' does not match",
        "images.serving\n  String should match pattern",
    ),
    (
        "ModelDeployment/glm-46",
        _set("spec.images", {"pullSecrets": ["Team_Secret"]}),
        "'Team_Secret' does not match",
        "images.pullSecrets.0\n  String should match pattern",
    ),
    ("Tenant/acme", _set("spec.apiKeys", [{"sha256": "sha256:" + "0" * 64}]), "'sha256' was unexpected", "secretRef"),
]


def _model_error(kind: str, spec: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        SPEC_MODELS[kind].model_validate(spec)
    return str(caught.value)


@pytest.mark.parametrize(("key", "mutate", "message"), INVALID, ids=[m for _, _, m in INVALID])
def test_invalid_specs_fail_cel_and_the_model_alike(
    schemas: CustomResourceSchemas, key: str, mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    obj = copy.deepcopy(_examples()[key])
    mutate(obj)
    problems = manifest_problems(obj, schemas)
    assert any(message in p for p in problems), problems
    assert message in _model_error(obj["kind"], obj["spec"])


@pytest.mark.parametrize(("key", "mutate", "admission", "model"), SCHEMA_ONLY, ids=[a for _, _, a, _ in SCHEMA_ONLY])
def test_invalid_specs_fail_the_schema_and_the_model(
    schemas: CustomResourceSchemas, key: str, mutate: Callable[[dict[str, Any]], None], admission: str, model: str
) -> None:
    obj = copy.deepcopy(_examples()[key])
    mutate(obj)
    problems = manifest_problems(obj, schemas)
    assert any(admission in p for p in problems), problems
    assert model in _model_error(obj["kind"], obj["spec"])


def test_label_keys_are_checked_by_the_model(schemas: CustomResourceSchemas) -> None:
    """Not at admission (a regex over unbounded map keys would exceed the CEL cost budget): the
    operator reports it as the NodeGroup's InvalidSpec condition."""
    obj = copy.deepcopy(load_examples()["NodeGroup/h100"])
    obj["spec"]["labels"] = {"bad key!": "x"}
    assert manifest_problems(obj, schemas) == []
    assert "label keys must be qualified names" in _model_error("NodeGroup", obj["spec"])


def test_deployment_names_must_fit_in_service_names(schemas: CustomResourceSchemas) -> None:
    obj = copy.deepcopy(load_examples()["ModelDeployment/glm-46"])
    obj["metadata"]["name"] = "4" + "x" * 45
    assert any("metadata.name must start with a letter" in p for p in manifest_problems(obj, schemas))


def test_a_pool_may_scale_to_zero_with_its_own_targets(schemas: CustomResourceSchemas) -> None:
    """minReplicas 0 is opt-in per pool; targets left out come from the plan and the SLOs."""
    obj = copy.deepcopy(load_examples()["ModelDeployment/glm-46"])
    scaling = {"minReplicas": 0, "maxReplicas": 4, "ttftSloSeconds": 1.5, "scaleDownAt": 0.5}
    obj["spec"]["prefill"] = {k: v for k, v in obj["spec"]["prefill"].items() if k != "replicas"} | {
        "autoscaling": scaling
    }
    assert manifest_problems(obj, schemas) == []
    pool = ModelDeploymentSpec.model_validate(obj["spec"]).prefill
    assert pool.autoscaling is not None and pool.min_replicas == 0
    assert (pool.autoscaling.ttft_slo_seconds, pool.autoscaling.itl_slo_seconds) == (1.5, 0.05)


def test_zero_router_shards_are_refused_naming_the_field(schemas: CustomResourceSchemas) -> None:
    obj = copy.deepcopy(load_examples()["ModelDeployment/glm-46"])
    obj["spec"]["router"]["shards"] = 0
    assert any("spec.router.shards" in p and "less than the minimum of 1" in p for p in manifest_problems(obj, schemas))
    assert "router.shards\n  Input should be greater than or equal to 1" in _model_error(obj["kind"], obj["spec"])
    obj["spec"]["router"]["shards"] = 2
    obj["spec"]["prefill"]["replicas"] = 2
    assert manifest_problems(obj, schemas) == []
    ModelDeploymentSpec.model_validate(obj["spec"])
