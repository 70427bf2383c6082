"""The `ModelDeployment` custom resource's status, as the operator writes it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from glmserve.common.deployment_plan import PlanStatus
from glmserve.common.resource import Condition, Spec

Phase = Literal["Pending", "Invalid", "Infeasible", "Provisioning", "Ready"]


class ReadyReplicas(Spec):
    """Replicas whose pods are all ready, by role."""

    prefill: int = Field(0, ge=0, description="prefill replicas whose worker pods are all ready")
    decode: int = Field(0, ge=0, description="decode replicas whose worker pods are all ready")
    router: int = Field(0, ge=0, description="ready router pods")


class ModelDeploymentStatus(Spec):
    """What the operator planned and last observed."""

    phase: Phase = Field(
        "Pending",
        description="Pending, Invalid (spec error), Infeasible (does not fit its node groups), "
        "Provisioning (children created, not all ready) or Ready",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description="Planned (a layout fits the node groups), Provisioned (enough nodes are ready), "
        "Ready (the Serve application and the router are up)",
    )
    endpoint: str | None = Field(None, description="base URL of the OpenAI API inside the cluster")
    ready_replicas: ReadyReplicas = Field(default_factory=ReadyReplicas, description="ready replicas by role")
    plan: PlanStatus | None = Field(None, description="the layout the capacity planner chose per pool")
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation last reconciled")
