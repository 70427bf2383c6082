"""The `Tenant` custom resource's status: whether the router can admit the tenant."""

from __future__ import annotations

from pydantic import Field

from glmserve.common.resource import Condition, Spec


class TenantStatus(Spec):
    """Ready is True when the tenant's Plan exists and every API key Secret resolves."""

    conditions: list[Condition] = Field(
        default_factory=list, max_length=8, description="Ready: plan found and API keys resolved"
    )
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation last checked")
