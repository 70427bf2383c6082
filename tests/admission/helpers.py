from __future__ import annotations

from glmserve.admission.model import Limits, Rates
from glmserve.admission.tenants import ResolvedTenant


def tenant(
    *,
    rpm: int = 0,
    itpm: int = 0,
    otpm: int = 0,
    concurrent: int = 0,
    max_context: int = 0,
    max_output: int = 0,
    default_output: int = 1024,
    models: tuple[str, ...] = (),
    tenant_id: str = "acme",
    plan: str = "pro",
) -> ResolvedTenant:
    limits = Limits(Rates(rpm, itpm, otpm, concurrent), max_context, max_output, default_output)
    return ResolvedTenant(tenant_id, plan, "standard", limits, frozenset(models), None)
