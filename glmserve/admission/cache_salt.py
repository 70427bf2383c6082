"""Per-tenant prefix-cache isolation: the `cache_salt` every request carries to vLLM.

A cached prefix answers measurably faster, so a shared cache tells one tenant what another sent.
vLLM mixes a request's `cache_salt` into its first block's hash, so requests with different salts
never share cached blocks. The salt is an HMAC of the tenant (or of its sharing group, when its
plan or itself opts into one) under a deployment secret: deterministic, so every replica and the
router's prompt hashing agree, and not reversible to the tenant id without the secret (tenant ids
are short names anyone could enumerate through a plain hash).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os

from glmserve.admission.tenants import ResolvedTenant
from glmserve.common.errors import ConfigError

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 16
_CONTEXT = b"glmserve cache salt v1\0"  # domain separation: this secret may key other HMACs later


def cache_salt(secret: bytes, tenant_id: str, sharing_group: str | None = None) -> str:
    """32 hex characters; tenants of one sharing group share it, everyone else has their own."""
    # the kind prefix keeps a tenant and a group with the same name apart
    subject = b"group\0" + sharing_group.encode() if sharing_group else b"tenant\0" + tenant_id.encode()
    return hmac.new(secret, _CONTEXT + subject, hashlib.sha256).hexdigest()[:32]


class CacheSalter:
    """`cache_salt` with the deployment's secret bound, checked once."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"the cache-salt secret needs at least {MIN_SECRET_BYTES} bytes, got {len(secret)}")
        self._secret = secret

    @classmethod
    def ephemeral(cls) -> CacheSalter:
        """A random secret for a single-process local stack. Replicas that must agree (several
        ingresses, the router's prompt hashing) need the same configured secret."""
        log.info("cache salts use a random per-process secret (set one to share salts across processes)")
        return cls(os.urandom(32))

    def __repr__(self) -> str:
        return "CacheSalter(secret=<hidden>)"

    def salt(self, tenant: ResolvedTenant) -> str:
        return cache_salt(self._secret, tenant.id, tenant.sharing_group)
