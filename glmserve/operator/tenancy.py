"""Plans, Tenants and their key Secrets -> the router's config (hashes only, never keys)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from glmserve.common.resource import Condition
from glmserve.common.tenancy import Plan, PlanSpec, SecretKeyRef, Tenant, TenantsFile, TenantSpec, hash_api_key
from glmserve.common.tenant_status import TenantStatus
from glmserve.operator.conditions import set_condition, spec_problems

# Reads one Secret key (decoded) or returns None when the Secret or the key is missing.
SecretReader = Callable[[SecretKeyRef], str | None]


@dataclass(frozen=True, slots=True)
class RouterTenancy:
    config: TenantsFile | None  # None when no Plan applies: the router then admits nobody
    problems: dict[str, str]  # tenant id -> why it was left out


def resolve_tenant(tenant_id: str, spec: TenantSpec, plans: dict[str, PlanSpec], read: SecretReader) -> Tenant | str:
    """The tenant with its keys hashed, or why it cannot be admitted."""
    if spec.plan not in plans:
        return f"plan {spec.plan} not found (plans: {', '.join(sorted(plans)) or 'none'})"
    hashes = []
    for key in spec.api_keys:
        ref = key.secret_ref
        value = read(ref)
        if not value:
            return f"Secret {ref.name} has no key {ref.key} (or it is empty)"
        # `echo key > file` leaves a newline that no client sends; API keys never contain spaces.
        hashes.append(hash_api_key(value.strip()))
    return spec.resolve(tenant_id, hashes)


def router_tenancy(
    plans: dict[str, PlanSpec], tenants: dict[str, TenantSpec], allowed: list[str], read: SecretReader
) -> RouterTenancy:
    """The config of a router serving `allowed` plans (empty: all) in one namespace."""
    chosen = {name: plan for name, plan in plans.items() if not allowed or name in allowed}
    admitted: list[Tenant] = []
    problems: dict[str, str] = {}
    for tenant_id, spec in sorted(tenants.items()):
        if spec.plan in plans and spec.plan not in chosen:
            continue  # a tenant of another deployment's plan
        resolved = resolve_tenant(tenant_id, spec, chosen, read)
        if isinstance(resolved, str):
            problems[tenant_id] = resolved
        else:
            admitted.append(resolved)
    if not chosen:
        return RouterTenancy(None, problems)
    plan_list = [Plan.model_validate({"name": name, **spec.model_dump()}) for name, spec in sorted(chosen.items())]
    return RouterTenancy(TenantsFile(plans=plan_list, tenants=admitted), problems)


def tenant_status(
    tenant_id: str,
    raw_spec: dict,
    plans: dict[str, PlanSpec],
    read: SecretReader,
    *,
    conditions: list[Condition],
    generation: int | None,
) -> TenantStatus:
    """Ready when the router can admit the tenant: valid spec, existing plan, readable keys."""
    try:
        resolved: Tenant | str = resolve_tenant(tenant_id, TenantSpec.model_validate(raw_spec), plans, read)
        reason = "Admitted" if isinstance(resolved, Tenant) else "Unresolved"
    except ValidationError as exc:
        resolved, reason = spec_problems(exc), "InvalidSpec"
    ready = isinstance(resolved, Tenant)
    message = f"{len(raw_spec.get('apiKeys', []))} API key(s) resolved" if ready else str(resolved)
    conditions = set_condition(conditions, "Ready", status=ready, reason=reason, message=message, generation=generation)
    return TenantStatus(conditions=conditions, observed_generation=generation)
