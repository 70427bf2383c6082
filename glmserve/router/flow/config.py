"""The router config's `flow` section."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from glmserve.common.tenancy import Name

Weight = Annotated[float, Field(gt=0)]


class FlowConfig(BaseModel):
    """How requests wait for an engine slot: bands by plan priority (strict), fairness between the
    tenants of a band weighted by plan, a bounded queue with a time-to-live."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_queued: int = Field(
        default=1024,
        ge=0,
        description="requests waiting per model, all bands together; when full, the lowest band's "
        "request served last is refused (503 + Retry-After). 0: never wait",
    )
    queue_ttl_s: float = Field(default=30.0, gt=0, description="a request waiting longer is refused with 503")
    retry_after_s: float = Field(default=1.0, gt=0, description="Retry-After of the requests refused here")
    replicas: int = Field(
        default=1,
        ge=1,
        description="router replicas routing to the same engines (per shard): each hands out "
        "1/replicas of the engines' max_running_requests",
    )
    reserved_slots: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="slots that only a light tenant (one request waiting, or within its idle_credit) "
        "of the highest band waiting may take, so it does not wait for a flood's slots to free; each "
        "replica keeps reserved_slots x replicas of its share (at most a quarter of it); 0: none",
    )
    reserve_hold_s: float = Field(
        default=10.0,
        gt=0,
        description="the reserved slots are kept while a light tenant was granted a slot within this "
        "long: once only floods have waited that long, they get every slot until a light tenant is served",
    )
    idle_credit: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="a tenant that was idle comes back this many of its requests behind its band's "
        "virtual time: a short burst goes ahead of the band's backlogged tenants (0: plain VTC)",
    )
    scale_from_zero: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        default=(),
        max_length=100,
        description="models whose decode pool may have no replica: their requests wait here (up to "
        "queue_ttl_s) for one to start, instead of being refused with no_endpoints at once",
    )
    plan_weights: dict[Name, Weight] = Field(
        default_factory=dict, description="fairness weight of each plan's tenants within their band"
    )
    default_weight: Weight = Field(default=1.0, description="the weight of plans not in plan_weights")
    metrics_tenants: tuple[Name, ...] = Field(
        default=(),
        max_length=100,
        description='tenant ids that label the flow metrics; every other tenant counts as "other"',
    )

    def weight(self, plan: str) -> float:
        return self.plan_weights.get(plan, self.default_weight)
