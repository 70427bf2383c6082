"""The ingress picks up rewritten tenants files (the operator's ConfigMap) without a restart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from glmserve.admission.metrics import AdmissionMetrics
from glmserve.admission.tenant_source import WatchedTenants
from glmserve.admission.tenants import OPEN_TENANT_ID
from glmserve.common.errors import AuthenticationError
from glmserve.common.tenancy import hash_api_key


def _write(path: Path, keys: dict[str, str]) -> None:
    """Replaces the file the way the kubelet does: a new inode swapped in."""
    tenants = [{"id": t, "plan": "basic", "apiKeys": [{"sha256": hash_api_key(k)}]} for t, k in keys.items()]
    tmp = path.with_suffix(".new")
    tmp.write_text(yaml.safe_dump({"plans": [{"name": "basic"}], "tenants": tenants}))
    os.replace(tmp, path)


def _watch(path: Path | None) -> WatchedTenants:
    return WatchedTenants(path, AdmissionMetrics(CollectorRegistry()), recheck_s=0)


def test_rotated_keys_and_new_tenants_take_effect(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    _write(path, {"acme": "sk-old"})
    tenants = _watch(path)
    assert tenants.authenticate("Bearer sk-old").id == "acme"
    _write(path, {"acme": "sk-new", "beta": "sk-beta"})
    assert tenants.authenticate("Bearer sk-new").id == "acme"
    assert tenants.authenticate("Bearer sk-beta").id == "beta"
    with pytest.raises(AuthenticationError):
        tenants.authenticate("Bearer sk-old")


def test_a_broken_rewrite_keeps_the_last_good_tenants(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    _write(path, {"acme": "sk-1"})
    tenants = _watch(path)
    path.write_text("plans: []\n")
    assert tenants.authenticate("Bearer sk-1").id == "acme"
    path.unlink()
    assert tenants.authenticate("Bearer sk-1").id == "acme"


def test_nobody_is_admitted_until_the_file_appears(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    tenants = _watch(path)
    with pytest.raises(AuthenticationError):
        tenants.authenticate("Bearer sk-1")
    _write(path, {"acme": "sk-1"})
    assert tenants.authenticate("Bearer sk-1").id == "acme"


def test_without_a_file_everyone_is_the_open_tenant() -> None:
    tenants = _watch(None)
    assert tenants.authenticate(None).id == tenants.authenticate("Bearer x").id == OPEN_TENANT_ID
