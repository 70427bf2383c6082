"""Tenants and plans: one pydantic schema for the local YAML file and the operator's CRDs.

API keys never appear in clear: a tenant lists the SHA-256 of each key (local file, router
config) or a reference to the Kubernetes Secret holding it (CRDs; the operator resolves it to
a hash). Two keys may be valid at once, so a key can be rotated without downtime.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PRIORITY_CLASSES = ("batch", "standard", "premium", "critical")
PriorityClass = Literal["batch", "standard", "premium", "critical"]
# Lower runs first: the order engine slots are granted in, and vLLM's priority scheduling value.
PRIORITY_RANK: dict[PriorityClass, int] = {"critical": 0, "premium": 1, "standard": 2, "batch": 3}

_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
Name = Annotated[str, Field(pattern=_NAME, description="a DNS-1123 label: lowercase letters, digits and '-'")]
PerMinute = Annotated[int, Field(ge=0, description="per minute; 0 means unlimited")]
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


def hash_api_key(key: str) -> str:
    """The stored form of an API key. Keys are random (not passwords), so a plain hash suffices."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(key), stored_hash)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class PlanLimits(_Strict):
    """Limits a plan grants; a tenant's `overrides` uses the same fields, all optional."""

    requests_per_minute: PerMinute = Field(
        0, alias="requestsPerMinute", description="requests per minute; 0: unlimited"
    )
    input_tokens_per_minute: PerMinute = Field(
        0, alias="inputTokensPerMinute", description="prompt tokens per minute; 0: unlimited"
    )
    output_tokens_per_minute: PerMinute = Field(
        0, alias="outputTokensPerMinute", description="generated tokens per minute; 0: unlimited"
    )
    max_concurrent_requests: int = Field(0, ge=0, alias="maxConcurrentRequests", description="0 means unlimited")
    max_context_tokens: int = Field(0, ge=0, alias="maxContextTokens", description="prompt + output; 0: model's")
    max_output_tokens: int = Field(0, ge=0, alias="maxOutputTokens", description="per request; 0: model's")
    default_output_tokens: int = Field(
        1024,
        ge=1,
        alias="defaultOutputTokens",
        description="output tokens reserved at admission when a request sets no max_tokens",
    )


class LimitOverrides(_Strict):
    """A tenant's own limits; each set field replaces its plan's."""

    requests_per_minute: PerMinute | None = Field(None, alias="requestsPerMinute", description="replaces the plan's")
    input_tokens_per_minute: PerMinute | None = Field(
        None, alias="inputTokensPerMinute", description="replaces the plan's"
    )
    output_tokens_per_minute: PerMinute | None = Field(
        None, alias="outputTokensPerMinute", description="replaces the plan's"
    )
    max_concurrent_requests: int | None = Field(
        None, ge=0, alias="maxConcurrentRequests", description="replaces the plan's"
    )
    max_context_tokens: int | None = Field(None, ge=0, alias="maxContextTokens", description="replaces the plan's")
    max_output_tokens: int | None = Field(None, ge=0, alias="maxOutputTokens", description="replaces the plan's")
    default_output_tokens: int | None = Field(
        None, ge=1, alias="defaultOutputTokens", description="replaces the plan's"
    )


class PlanSpec(PlanLimits):
    """A plan without its name: the spec of the Plan custom resource (named by metadata.name)."""

    priority: PriorityClass = Field("standard", description="scheduling class: batch, standard, premium or critical")
    allowed_models: list[str] = Field(
        default_factory=list, alias="allowedModels", description="model names; empty allows every model"
    )
    cache_sharing_group: Name | None = Field(
        None,
        alias="cacheSharingGroup",
        description="tenants of this plan share prefix caches within this group (default: never shared)",
    )

    def allows(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models


class Plan(PlanSpec):
    name: Name


class SecretKeyRef(_Strict):
    """A key of a Secret in the tenant's namespace that holds one API key in clear."""

    name: Name
    key: str = Field("api-key", min_length=1, max_length=253, description="the Secret's data key")


class ApiKey(_Strict):
    """Exactly one of `sha256` (a stored hash) or `secretRef` (a Secret the operator hashes)."""

    sha256: str | None = Field(None, description="'sha256:' + 64 hex digits of the key")
    secret_ref: SecretKeyRef | None = Field(None, alias="secretRef", description="the Secret key holding the key")

    @field_validator("sha256")
    @classmethod
    def _hash_form(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value):
            raise ValueError("must be 'sha256:' followed by 64 lowercase hex digits (see glmserve key hash)")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.sha256 is None) == (self.secret_ref is None):
            raise ValueError("an API key needs exactly one of sha256 or secretRef")
        return self


class _TenantFields(_Strict):
    plan: Name
    overrides: LimitOverrides = Field(default_factory=LimitOverrides, description="limits replacing the plan's")
    cache_sharing_group: Name | None = Field(
        None, alias="cacheSharingGroup", description="replaces the plan's cache sharing group"
    )


class SecretApiKey(_Strict):
    secret_ref: SecretKeyRef = Field(alias="secretRef", description="the Secret key holding the API key")


class TenantSpec(_TenantFields):
    """The Tenant custom resource's spec (the tenant id is metadata.name): keys only as Secret references."""

    api_keys: list[SecretApiKey] = Field(
        alias="apiKeys", min_length=1, max_length=2, description="one key, or two while rotating"
    )

    def resolve(self, tenant_id: str, hashes: list[str]) -> Tenant:
        """The tenant with `hashes` (one per `api_keys` entry, read from the Secrets) in place of the refs."""
        return Tenant.model_validate(
            {
                "id": tenant_id,
                "apiKeys": [{"sha256": h} for h in hashes],
                **self.model_dump(by_alias=True, exclude={"api_keys"}, exclude_none=True),
            }
        )


class Tenant(_TenantFields):
    id: Name
    api_keys: list[ApiKey] = Field(alias="apiKeys", min_length=1, max_length=2)

    def limits(self, plan: Plan) -> PlanLimits:
        """The plan's limits with this tenant's overrides applied."""
        changed = {k: v for k, v in self.overrides.model_dump().items() if v is not None}
        return PlanLimits.model_validate(plan.model_dump(include=set(PlanLimits.model_fields)) | changed)

    def sharing_group(self, plan: Plan) -> str | None:
        return self.cache_sharing_group or plan.cache_sharing_group


class TenantsFile(_Strict):
    """The local-mode file (`glmserve up --tenants FILE`) and the router's rendered config."""

    plans: list[Plan] = Field(min_length=1)
    tenants: list[Tenant] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        plans = [p.name for p in self.plans]
        if len(set(plans)) != len(plans):
            raise ValueError(f"plan names must be unique, got {plans}")
        ids = [t.id for t in self.tenants]
        if len(set(ids)) != len(ids):
            raise ValueError(f"tenant ids must be unique, got {ids}")
        for tenant in self.tenants:
            if tenant.plan not in plans:
                raise ValueError(f"tenant {tenant.id!r} uses unknown plan {tenant.plan!r}; plans: {plans}")
        return self
