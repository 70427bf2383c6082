"""The tenants the router (and the ingress) admit, re-read when their file changes.

In a cluster the file is a ConfigMap key the operator rewrites when Plans, Tenants or their key
Secrets change; the kubelet swaps it in place, so new tenants and rotated keys take effect
without restarting the (GPU-holding) Ray cluster. Until the operator has rendered one, the file
is absent and nobody is admitted.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from glmserve.admission.metrics import AdmissionMetrics
from glmserve.admission.tenants import ResolvedTenant, TenantRegistry
from glmserve.common.errors import ConfigError

log = logging.getLogger(__name__)

# A stat per request would cost little, but tenants need not appear faster than the kubelet syncs.
RECHECK_S = 2.0


class WatchedTenants:
    def __init__(self, path: Path | None, metrics: AdmissionMetrics, *, recheck_s: float = RECHECK_S) -> None:
        """`path` None: open access (local mode). A missing file admits nobody until it appears."""
        self._path, self._metrics, self._recheck_s = path, metrics, recheck_s
        self._stamp: tuple[int, int] | None = None
        self._checked_at = time.monotonic()
        if path is None:
            self.registry = TenantRegistry.load(None, metrics=metrics)
            return
        self._stamp = _stamp(path)
        if self._stamp is None:
            log.warning("tenants file %s does not exist yet: every request gets 401 until it does", path)
            self.registry = TenantRegistry((), metrics=metrics)
        else:
            self.registry = TenantRegistry.from_file(path, metrics=metrics)

    def authenticate(self, authorization: str | None) -> ResolvedTenant:
        self._refresh()
        return self.registry.authenticate(authorization)

    def get(self, tenant_id: str) -> ResolvedTenant | None:
        """The tenant the ingress authenticated, as the current file has it."""
        self._refresh()
        return self.registry.get(tenant_id)

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._path is None or now - self._checked_at < self._recheck_s:
            return
        self._checked_at = now
        stamp = _stamp(self._path)
        if stamp == self._stamp or stamp is None:
            return  # a file that vanished keeps the last good tenants: a deleted ConfigMap is an accident
        try:
            self.registry = TenantRegistry.from_file(self._path, metrics=self._metrics)
        except ConfigError as exc:
            log.error("keeping the previous tenants: %s", exc)
        else:
            log.info("tenants reloaded from %s: %d tenant(s)", self._path, len(self.registry))
        self._stamp = stamp


def _stamp(path: Path) -> tuple[int, int] | None:
    """Changes whenever the file is replaced or rewritten (the kubelet swaps a symlink)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns
