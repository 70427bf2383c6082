"""Fixtures of the operator tests: schemas to validate against, the examples, helm and kubectl."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from glmserve.common.deployment import ModelDeploymentSpec
from glmserve.common.deployment_plan import PlanStatus, plan_for
from glmserve.common.nodegroup import NodeGroupSpec
from glmserve.operator.build.inputs import DeploymentInputs
from glmserve.operator.build.meta import Owner
from glmserve.operator.crds import RESOURCES, build_crd
from glmserve.operator.settings import OperatorSettings
from tests.operator.k8s_checks import CustomResourceSchemas

REPO_ROOT = Path(__file__).resolve().parents[2]
VENDORED_CRDS = REPO_ROOT / "vendor" / "crds"
EXAMPLES = REPO_ROOT / "examples"
CLUSTER_TINY = EXAMPLES / "cluster-tiny"  # the CPU development deployment `glmserve cluster up` runs
TOOLS = REPO_ROOT / ".tools" / "bin"
CHART = REPO_ROOT / "charts" / "glmserve"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kubeconfig",
        default=None,
        help="run the operator end-to-end tests against the cluster of this kubeconfig instead of kmock (use a "
        "test cluster: the in-process operator watches all namespaces). They install missing CRDs, and create "
        "and delete their own NodeGroups and namespaces; Karpenter groups name a node class that does not "
        "exist, so no node is ever launched",
    )
    parser.addoption(
        "--operator-image",
        default=None,
        help="run the operator of the end-to-end tests from this image (images/operator, `make images`) "
        "with podman or buildah instead of in-process",
    )


@pytest.fixture(scope="session")
def schemas() -> CustomResourceSchemas:
    """Our CRDs (generated) and the vendored upstream ones (RayService, NodePool, monitors)."""
    return CustomResourceSchemas([build_crd(r) for r in RESOURCES]).merged(CustomResourceSchemas.load(VENDORED_CRDS))


@pytest.fixture(scope="module")
def chart_schemas(schemas: CustomResourceSchemas) -> CustomResourceSchemas:
    """Everything `schemas` knows plus the chart's own CRDs (kopf's peering)."""
    return schemas.merged(CustomResourceSchemas.load(CHART / "crds"))


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run scripts/install-k8s-tools.sh (make test does)")
    return path


def load_examples(directory: Path = EXAMPLES) -> dict[str, dict[str, Any]]:
    """Every object in `directory` (examples/ itself, or one of its example deployments), by `Kind/name`."""
    objects = {}
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


def example_inputs(tls: bool = True, uid: str = "2b7e1c4e-5b7a-4a57-9a63-7d5f3c0e9a11") -> DeploymentInputs:
    """The example ModelDeployment, planned on the example NodeGroups, as the handler would build it."""
    objs = load_examples()
    raw = copy.deepcopy(objs["ModelDeployment/glm-46"])
    if not tls:
        del raw["spec"]["ingress"]["tlsSecretName"]
    return planned_inputs(objs, raw, uid)


def sharded_inputs(shards: int) -> DeploymentInputs:
    """The example ModelDeployment with `shards` router shards (and 3 replicas in each pool)."""
    objs = load_examples()
    raw = copy.deepcopy(objs["ModelDeployment/glm-46"])
    raw["spec"]["router"]["shards"] = shards
    raw["spec"]["prefill"]["replicas"] = 3
    raw["spec"]["decode"]["autoscaling"]["maxReplicas"] = 3
    return planned_inputs(objs, raw, "2b7e1c4e-5b7a-4a57-9a63-7d5f3c0e9a11")


def cluster_tiny_inputs(uid: str = "5c0f3e1a-2d4b-4c8e-9f10-6a7b8c9d0e12") -> DeploymentInputs:
    """examples/cluster-tiny's ModelDeployment on its CPU NodeGroup."""
    objs = load_examples(CLUSTER_TINY)
    return planned_inputs(objs, objs["ModelDeployment/tiny"], uid)


def planned_inputs(objs: dict[str, dict[str, Any]], raw: dict[str, Any], uid: str) -> DeploymentInputs:
    groups = {
        o["metadata"]["name"]: NodeGroupSpec.model_validate(o["spec"])
        for o in objs.values()
        if o["kind"] == "NodeGroup"
    }
    spec = ModelDeploymentSpec.model_validate(raw["spec"])
    return DeploymentInputs(
        name=raw["metadata"]["name"],
        namespace=raw["metadata"]["namespace"],
        owner=Owner("ModelDeployment", raw["metadata"]["name"], uid),
        spec=spec,
        groups=groups,
        plan=PlanStatus.of(plan_for(spec, groups), groups),
        images=OperatorSettings().images(spec.images),
        ray_version="2.60.0",
    )
