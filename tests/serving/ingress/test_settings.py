"""Each ingress replica reads its tenancy from its own pod: Serve builds the app on another node."""

from __future__ import annotations

import pytest

from glmserve.serving.ingress.settings import LimitsSettings, limits_from_environment


def test_the_ingress_pods_environment_names_its_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLMSERVE_TENANTS_FILE", "/etc/glmserve/tenants/tenants.yaml")
    monkeypatch.setenv("GLMSERVE_REDIS_URL", "redis://limits:6379/0")
    monkeypatch.setenv("GLMSERVE_LIMITS_OUTAGE", "fail-closed")
    monkeypatch.setenv("GLMSERVE_CACHE_SALT_SECRET", "ab" * 16)
    assert limits_from_environment() == LimitsSettings(
        tenants_file="/etc/glmserve/tenants/tenants.yaml",
        redis_url="redis://limits:6379/0",
        outage="fail-closed",
        cache_salt_secret="ab" * 16,
    )


def test_a_pod_without_tenancy_serves_one_open_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GLMSERVE_TENANTS_FILE", "GLMSERVE_REDIS_URL", "GLMSERVE_LIMITS_OUTAGE", "GLMSERVE_CACHE_SALT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    assert limits_from_environment() == LimitsSettings()
