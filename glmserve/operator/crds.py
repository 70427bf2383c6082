"""glmserve's CustomResourceDefinitions, generated from the pydantic models in `glmserve.common`.

`python -m glmserve.operator.crds DIR` writes them as YAML (the Helm chart's `crds/`); a test
keeps the chart's copies equal to this output.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from glmserve.common.deployment import DEPLOYMENT_NAME, MSG_DEPLOYMENT_NAME, ModelDeploymentSpec
from glmserve.common.deployment_status import ModelDeploymentStatus
from glmserve.common.nodegroup import MSG_NODE_GROUP_NAME, NODE_GROUP_NAME, NodeGroupSpec, NodeGroupStatus
from glmserve.common.resource import GROUP, VERSION, cel
from glmserve.common.tenancy import PlanSpec, TenantSpec
from glmserve.common.tenant_status import TenantStatus
from glmserve.operator.schema import Schema, structural


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0  # 1: only with `kubectl get -o wide`


@dataclass(frozen=True, slots=True)
class CustomResource:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    namespaced: bool
    description: str
    spec: type[BaseModel]
    status: type[BaseModel] | None
    columns: tuple[Column, ...]
    name_rule: tuple[str, str] | None = None  # (regex, message) for metadata.name

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _ready(kind: str) -> Column:
    return Column("Ready", '.status.conditions[?(@.type=="Ready")].status', description=f"{kind} is ready")


AGE = Column("Age", ".metadata.creationTimestamp", "date")

NODE_GROUP = CustomResource(
    kind="NodeGroup",
    plural="nodegroups",
    short_names=("ng",),
    namespaced=False,
    description="A fleet of identical GPU nodes (H100 or H200), or CPU-only nodes, that model pools are pinned to.",
    spec=NodeGroupSpec,
    status=NodeGroupStatus,
    columns=(
        Column("GPU", ".spec.gpu", description="GPU type"),
        Column("GPUs/Node", ".spec.gpusPerNode", "integer", "GPUs per node"),
        Column("CPUs/Node", ".spec.cpu.cores", "integer", "cores per node of a CPU-only group", priority=1),
        Column("Provisioner", ".spec.provisioner", description="karpenter or static"),
        Column("Min", ".spec.minNodes", "integer", "minimum nodes"),
        Column("Max", ".spec.maxNodes", "integer", "maximum nodes"),
        Column("Ready Nodes", ".status.readyNodes", "integer", "nodes ready"),
        Column("GPUs", ".status.allocatableGpus", "integer", "allocatable GPUs on ready nodes"),
        Column("Memory/GPU", ".status.gpuMemoryGB", "number", "GB of HBM per GPU", priority=1),
        Column("TB/s/GPU", ".status.gpuBandwidthTBps", "number", "HBM bandwidth per GPU", priority=1),
        AGE,
    ),
    name_rule=(NODE_GROUP_NAME, MSG_NODE_GROUP_NAME),
)

MODEL_DEPLOYMENT = CustomResource(
    kind="ModelDeployment",
    plural="modeldeployments",
    short_names=("md",),
    namespaced=True,
    description="GLM-4.6 served by disaggregated prefill and decode pools, a KV-aware router and an OpenAI ingress.",
    spec=ModelDeploymentSpec,
    status=ModelDeploymentStatus,
    columns=(
        Column("Model", ".spec.model.name", description="catalogue name"),
        Column("Phase", ".status.phase", description="Pending, Invalid, Infeasible, Provisioning or Ready"),
        Column("Prefill GPUs", ".status.plan.prefill.gpusPerReplica", "integer", "GPUs per prefill replica"),
        Column("Decode GPUs", ".status.plan.decode.gpusPerReplica", "integer", "GPUs per decode replica"),
        _ready("the deployment"),
        Column("Endpoint", ".status.endpoint", description="OpenAI base URL", priority=1),
        AGE,
    ),
    name_rule=(DEPLOYMENT_NAME, MSG_DEPLOYMENT_NAME),
)

PLAN = CustomResource(
    kind="Plan",
    plural="plans",
    short_names=(),
    namespaced=True,
    description="Rate limits and priority that tenants subscribe to; the router enforces them.",
    spec=PlanSpec,
    status=None,
    columns=(
        Column("Priority", ".spec.priority", description="scheduling class"),
        Column("RPM", ".spec.requestsPerMinute", "integer", "requests per minute (0: unlimited)"),
        AGE,
    ),
)

TENANT = CustomResource(
    kind="Tenant",
    plural="tenants",
    short_names=(),
    namespaced=True,
    description="A customer of the API: its plan, limit overrides and API keys (as Secret references).",
    spec=TenantSpec,
    status=TenantStatus,
    columns=(Column("Plan", ".spec.plan", description="the tenant's plan"), _ready("the tenant"), AGE),
)

RESOURCES = (NODE_GROUP, MODEL_DEPLOYMENT, PLAN, TENANT)


def _object_schema(resource: CustomResource) -> Schema:
    properties: dict[str, Schema] = {
        "apiVersion": {"type": "string", "description": "versioned schema of this object: glmserve.io/v1alpha1"},
        "kind": {"type": "string", "description": f"REST resource this object represents: {resource.kind}"},
        "metadata": {"type": "object", "description": "standard object metadata"},
        "spec": structural(resource.spec),
    }
    if resource.status is not None:
        properties["status"] = structural(resource.status)
    schema: Schema = {
        "type": "object",
        "description": resource.description,
        "required": ["spec"],
        "properties": properties,
    }
    if resource.name_rule is not None:
        pattern, message = resource.name_rule
        schema["x-kubernetes-validations"] = [cel(f"self.metadata.name.matches('{pattern}')", message)]
    return schema


def build_crd(resource: CustomResource) -> dict[str, Any]:
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": _object_schema(resource)},
        "additionalPrinterColumns": [
            {
                "name": c.name,
                "type": c.type,
                "jsonPath": c.json_path,
                **({"description": c.description} if c.description else {}),
                **({"priority": c.priority} if c.priority else {}),
            }
            for c in resource.columns
        ],
    }
    if resource.status is not None:
        version["subresources"] = {"status": {}}
    names: dict[str, Any] = {
        "kind": resource.kind,
        "listKind": f"{resource.kind}List",
        "plural": resource.plural,
        "singular": resource.singular,
        "categories": ["glmserve"],
    }
    if resource.short_names:
        names["shortNames"] = list(resource.short_names)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": resource.crd_name},
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": "Namespaced" if resource.namespaced else "Cluster",
            "versions": [version],
        },
    }


def crd_yaml(resource: CustomResource) -> str:
    return yaml.safe_dump(build_crd(resource), sort_keys=False, width=120)


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m glmserve.operator.crds DIR")
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for resource in RESOURCES:
        (out / f"{resource.crd_name}.yaml").write_text(crd_yaml(resource))


if __name__ == "__main__":
    main(sys.argv[1:])
