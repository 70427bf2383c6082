"""The `NodeGroup` custom resource: a fleet of identical GPU (or CPU-only) nodes that pools are pinned to."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from glmserve.common.gpus import DeviceType, GpuType
from glmserve.common.resource import Condition, Spec, cel, validations

NODE_GROUP_LABEL = "glmserve.io/node-group"
RESERVED_PREFIX = "glmserve.io/"

# Kubernetes label and taint syntax (a qualified name; a value of at most 63 characters).
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# The name becomes a label value and a Ray resource name.
NODE_GROUP_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
MSG_NODE_GROUP_NAME = "metadata.name must be a DNS-1123 label (at most 63 lowercase letters, digits or '-')"
LabelKey = Annotated[str, Field(pattern=QUALIFIED_NAME, max_length=316)]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE, max_length=63)]

MSG_MIN_MAX = "minNodes must not exceed maxNodes"
MSG_NODE_CLASS = "provisioner karpenter needs nodeClassRef (the Karpenter node class to launch nodes with)"
MSG_NODE_CLASS_STATIC = "nodeClassRef applies to provisioner karpenter only"
MSG_INSTANCE_TYPES = "provisioner karpenter needs instanceTypes (which instances to launch for this group)"
MSG_DEVICE = "set exactly one of gpu (GPU nodes) and cpu (CPU-only nodes)"
MSG_CPU_ENGINES = "cpu.cores must be a multiple of cpu.enginesPerNode (each engine gets the same whole cores)"
GIB = 2**30
MSG_KARPENTER_MIN = (
    "with provisioner karpenter, minNodes must be 0 (nodes follow pending pods) or equal maxNodes (a fixed fleet)"
)
MSG_RESERVED_LABEL = "label keys under glmserve.io/ are reserved for the operator"
MSG_LABEL_KEY = "label keys must be qualified names, e.g. example.com/gpu-pool"


class Taint(Spec):
    """A node taint; every pod the operator pins to this group tolerates it."""

    key: LabelKey = Field(description="taint key, e.g. nvidia.com/gpu")
    value: LabelValue | None = Field(None, description="taint value (optional)")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = Field(
        description="NoSchedule, PreferNoSchedule or NoExecute"
    )


class NodeClassRef(Spec):
    """The cloud-specific Karpenter node class (AMI, subnets, disks) the nodes launch with."""

    group: str = Field("karpenter.k8s.aws", pattern=r"^[^/]+$", description="API group of the node class")
    kind: str = Field("EC2NodeClass", min_length=1, description="kind of the node class, e.g. EC2NodeClass")
    name: str = Field(min_length=1, max_length=253, description="name of the node class object")


class CpuNodes(Spec):
    """CPU-only nodes: pools run vLLM's CPU backend, for development and smoke tests of a cluster
    without GPUs. One Ray worker pod per node requests `cores` and `memoryGiB` (limits equal)."""

    model_config = ConfigDict(
        json_schema_extra=validations(cel("self.cores % self.enginesPerNode == 0", MSG_CPU_ENGINES))
    )

    cores: int = Field(ge=1, le=1024, description="CPU cores of one node that its Ray worker pod requests")
    memory_gib: float = Field(
        alias="memoryGiB", ge=0.25, le=16384, description="memory of one node's Ray worker pod in GiB (request = limit)"
    )
    engines_per_node: int = Field(
        1, ge=1, le=64, description="engine ranks one node runs; each gets cores / enginesPerNode cores"
    )
    kv_cache_gib: float = Field(
        0.5, alias="kvCacheGiB", ge=0.001, le=4096, description="KV cache of one engine rank in GiB (vLLM CPU backend)"
    )

    @model_validator(mode="after")
    def _divides(self) -> Self:
        if self.cores % self.engines_per_node:
            raise ValueError(MSG_CPU_ENGINES)
        return self

    @property
    def cores_per_engine(self) -> int:
        return self.cores // self.engines_per_node

    @property
    def memory_per_engine_bytes(self) -> float:
        return self.memory_gib * GIB / self.engines_per_node


class NodeGroupSpec(Spec):
    """Nodes of one type (GPU, or CPU-only), provisioned by Karpenter or adopted as they are (`static`)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("has(self.gpu) != has(self.cpu)", MSG_DEVICE),
            cel("self.minNodes <= self.maxNodes", MSG_MIN_MAX),
            cel("self.provisioner != 'karpenter' || has(self.nodeClassRef)", MSG_NODE_CLASS),
            cel("self.provisioner == 'karpenter' || !has(self.nodeClassRef)", MSG_NODE_CLASS_STATIC),
            cel("self.provisioner != 'karpenter' || size(self.instanceTypes) > 0", MSG_INSTANCE_TYPES),
            cel(
                "self.provisioner != 'karpenter' || self.minNodes == 0 || self.minNodes == self.maxNodes",
                MSG_KARPENTER_MIN,
            ),
        )
    )

    gpu: GpuType | None = Field(
        None, description="GPU model: H100 (80 GB HBM3, 3.35 TB/s) or H200 (141 GB HBM3e, 4.8 TB/s); or set cpu"
    )
    gpus_per_node: Literal[1, 2, 4, 8] = Field(
        8, description="GPUs of one node, all requested by one Ray worker pod (GPU groups)"
    )
    cpu: CpuNodes | None = Field(None, description="CPU-only nodes instead of gpu (development, smoke tests)")
    min_nodes: int = Field(0, ge=0, le=1000, description="nodes kept even when idle")
    max_nodes: int = Field(ge=1, le=1000, description="most nodes this group may have; the planner's capacity")
    provisioner: Literal["karpenter", "static"] = Field(
        "karpenter",
        description="karpenter: the operator renders a karpenter.sh/v1 NodePool; static: existing nodes labelled "
        f"{NODE_GROUP_LABEL}=<name> (and with `labels`) are adopted as they are",
    )
    node_class_ref: NodeClassRef | None = Field(None, description="Karpenter node class (provisioner karpenter)")
    instance_types: list[LabelValue] = Field(
        default_factory=list, max_length=32, description="instance types to launch, e.g. p5.48xlarge (karpenter)"
    )
    capacity_type: Literal["on-demand", "spot", "reserved"] = Field(
        "on-demand", description="how Karpenter buys nodes: on-demand, spot or reserved"
    )
    zones: list[LabelValue] = Field(
        default_factory=list, max_length=32, description="topology zones to launch in; empty: any"
    )
    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="node labels: set on the nodes Karpenter launches, required on adopted static nodes",
        # Key syntax is checked by the model only: a CRD cannot bound map keys' length, and a regex
        # over unbounded keys would blow the API server's CEL cost budget.
        json_schema_extra=validations(cel(f"self.all(k, !k.startsWith('{RESERVED_PREFIX}'))", MSG_RESERVED_LABEL)),
    )
    taints: list[Taint] = Field(default_factory=list, max_length=16, description="node taints, tolerated by our pods")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = []
        if (self.gpu is None) == (self.cpu is None):
            problems.append(MSG_DEVICE)
        if self.min_nodes > self.max_nodes:
            problems.append(MSG_MIN_MAX)
        karpenter = self.provisioner == "karpenter"
        if karpenter and self.node_class_ref is None:
            problems.append(MSG_NODE_CLASS)
        if not karpenter and self.node_class_ref is not None:
            problems.append(MSG_NODE_CLASS_STATIC)
        if karpenter and not self.instance_types:
            problems.append(MSG_INSTANCE_TYPES)
        if karpenter and self.min_nodes not in (0, self.max_nodes):
            problems.append(MSG_KARPENTER_MIN)
        if any(len(key) > 316 or not re.match(QUALIFIED_NAME, key) for key in self.labels):
            problems.append(MSG_LABEL_KEY)
        if any(key.startswith(RESERVED_PREFIX) for key in self.labels):
            problems.append(MSG_RESERVED_LABEL)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def device(self) -> DeviceType:
        """What one engine rank of this group runs on."""
        return self.gpu or "CPU"

    @property
    def slots_per_node(self) -> int:
        """Engine ranks one node holds: its GPUs, or a CPU group's enginesPerNode."""
        return self.cpu.engines_per_node if self.cpu else self.gpus_per_node

    def node_selector(self, name: str) -> dict[str, str]:
        """Labels that pin a pod to this group's nodes."""
        return {NODE_GROUP_LABEL: name, **self.labels}


class NodeGroupStatus(Spec):
    """What the operator last observed of the group's nodes."""

    gpu_memory_gb: float | None = Field(None, alias="gpuMemoryGB", description="HBM of one GPU of this type, in GB")
    gpu_bandwidth_tb_per_s: float | None = Field(
        None, alias="gpuBandwidthTBps", description="HBM bandwidth of one GPU, in TB/s"
    )
    nodes: int = Field(0, ge=0, description="nodes of this group, ready or not")
    ready_nodes: int = Field(0, ge=0, description="nodes whose Ready condition is True")
    allocatable_gpus: int = Field(0, ge=0, description="GPUs the ready nodes report as allocatable")
    node_pool: str | None = Field(None, description="the Karpenter NodePool rendered for this group")
    conditions: list[Condition] = Field(default_factory=list, max_length=8, description="Ready: minNodes are ready")
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation last reconciled")
