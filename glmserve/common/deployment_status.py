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


class ColdStarts(Spec):
    """Scale from zero as the router measured it: from the first request that found the decode pool
    empty to the first replica registering (glmserve_router_cold_start_seconds)."""

    count: int = Field(ge=0, description="cold starts the router timed since it started")
    last_seconds: float = Field(ge=0, description="the latest one, in seconds")
    mean_seconds: float = Field(ge=0, description="their mean, in seconds")
    router_pod: str = Field(description="the router pod they were read from (the one that timed the most)")


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
    cold_starts: ColdStarts | None = Field(
        None, description="the decode pool's starts from zero (minReplicas: 0), read from the router's metrics"
    )
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation last reconciled")
