"""API keys to tenants: the registry the ingress asks on every request.

Keys exist here only as SHA-256 digests. A presented key is hashed and the digest looked up in a
table: the only secret-dependent work is SHA-256 (constant time for a given key length) and a
probe keyed by a digest the caller cannot steer, so response times reveal nothing about how
close a guess was, unlike comparing keys character by character. Neither keys nor digests are
logged, put in errors or used as metric labels.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from glmserve.admission.metrics import AdmissionMetrics
from glmserve.admission.model import UNLIMITED, Limits
from glmserve.common.errors import AuthenticationError, ConfigError
from glmserve.common.tenancy import PriorityClass, TenantsFile

log = logging.getLogger(__name__)

OPEN_TENANT_ID = "default"
_BEARER = "bearer "


@dataclass(frozen=True, slots=True)
class ResolvedTenant:
    """A tenant with its plan and overrides applied: everything admission needs, nothing secret."""

    id: str
    plan: str
    priority: PriorityClass
    limits: Limits
    allowed_models: frozenset[str]  # empty: every model
    sharing_group: str | None  # prefix-cache sharing group; None: the tenant's own

    def allows(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models


OPEN_TENANT = ResolvedTenant(OPEN_TENANT_ID, "open", "standard", UNLIMITED, frozenset(), None)


class TenantRegistry:
    def __init__(
        self,
        tenants: Iterable[tuple[ResolvedTenant, Iterable[str]]],
        *,
        open_tenant: ResolvedTenant | None = None,
        metrics: AdmissionMetrics | None = None,
    ) -> None:
        """`tenants`: each tenant with the `sha256:<hex>` digests of its keys (two during a rotation).
        With `open_tenant`, requests are not authenticated and all run as that tenant."""
        self._tenants: dict[str, ResolvedTenant] = {}
        self._by_digest: dict[bytes, ResolvedTenant] = {}
        for tenant, digests in tenants:
            self._tenants[tenant.id] = tenant
            for digest in digests:
                raw = bytes.fromhex(digest.removeprefix("sha256:"))
                other = self._by_digest.setdefault(raw, tenant)
                if other is not tenant:
                    raise ConfigError(f"tenants {other.id!r} and {tenant.id!r} share an API key; keys must be unique")
        self._open = open_tenant
        self._metrics = metrics

    @classmethod
    def from_config(cls, config: TenantsFile, *, metrics: AdmissionMetrics | None = None) -> TenantRegistry:
        plans = {plan.name: plan for plan in config.plans}
        entries = []
        for tenant in config.tenants:
            plan = plans[tenant.plan]
            digests = []
            for n, key in enumerate(tenant.api_keys, 1):
                if key.sha256 is None:
                    raise ConfigError(
                        f"tenant {tenant.id!r} key {n} refers to a Secret; the router needs sha256 digests "
                        "(the operator resolves Secrets; a local tenants file lists `sha256:` hashes)"
                    )
                digests.append(key.sha256)
            resolved = ResolvedTenant(
                id=tenant.id,
                plan=plan.name,
                priority=plan.priority,
                limits=Limits.from_plan(tenant.limits(plan)),
                allowed_models=frozenset(plan.allowed_models),
                sharing_group=tenant.sharing_group(plan),
            )
            entries.append((resolved, digests))
        log.info("tenants: %d tenants on %d plans", len(entries), len(plans))
        return cls(entries, metrics=metrics)

    @classmethod
    def from_file(cls, path: Path, *, metrics: AdmissionMetrics | None = None) -> TenantRegistry:
        try:
            raw = yaml.safe_load(path.read_text())
            config = TenantsFile.model_validate(raw)
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise ConfigError(f"tenants file {path}: {exc}") from exc
        return cls.from_config(config, metrics=metrics)

    @classmethod
    def open_access(cls, *, metrics: AdmissionMetrics | None = None) -> TenantRegistry:
        log.warning(
            "no tenants file: requests are not authenticated and all run as tenant %r without rate limits "
            "(pass a tenants file to require API keys)",
            OPEN_TENANT_ID,
        )
        return cls((), open_tenant=OPEN_TENANT, metrics=metrics)

    @classmethod
    def load(cls, path: Path | None, *, metrics: AdmissionMetrics | None = None) -> TenantRegistry:
        """The local mode's registry: the tenants file if one is configured, else open access."""
        return cls.open_access(metrics=metrics) if path is None else cls.from_file(path, metrics=metrics)

    @property
    def is_open(self) -> bool:
        return self._open is not None

    def __len__(self) -> int:
        return len(self._tenants)

    def get(self, tenant_id: str) -> ResolvedTenant | None:
        return self._tenants.get(tenant_id) or (self._open if self._open and self._open.id == tenant_id else None)

    def authenticate(self, authorization: str | None) -> ResolvedTenant:
        """The tenant of an `Authorization` header value; AuthenticationError (401) otherwise."""
        if self._open is not None:
            return self._open
        if not authorization or not authorization.strip():
            self._failed("missing")
            raise AuthenticationError(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        value = authorization.strip()
        if value[: len(_BEARER)].lower() != _BEARER or not value[len(_BEARER) :].strip():
            self._failed("malformed")
            raise AuthenticationError(
                "Malformed Authorization header: expected 'Authorization: Bearer YOUR_KEY'.", code="invalid_api_key"
            )
        digest = hashlib.sha256(value[len(_BEARER) :].strip().encode()).digest()
        tenant = self._by_digest.get(digest)
        if tenant is None:
            self._failed("unknown")
            # never echo any part of the key: error bodies end up in client logs
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        return tenant

    def _failed(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.auth_failures.labels(reason).inc()
