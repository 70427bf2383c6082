from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from glmserve.admission.metrics import AdmissionMetrics
from glmserve.admission.model import Rates
from glmserve.admission.tenants import OPEN_TENANT_ID, TenantRegistry
from glmserve.common.errors import AuthenticationError, ConfigError
from glmserve.common.tenancy import TenantsFile, hash_api_key

OLD_KEY, NEW_KEY, OTHER_KEY = "sk-old-3f9a0c", "sk-new-77d2e1", "sk-other-a1b2c3"

TENANTS_YAML = f"""
plans:
  - name: free
    requestsPerMinute: 10
    inputTokensPerMinute: 10000
    outputTokensPerMinute: 2000
    maxConcurrentRequests: 2
    maxContextTokens: 8192
    allowedModels: [glm-4.6-tiny]
  - name: pro
    priority: premium
    requestsPerMinute: 600
    cacheSharingGroup: pro-shared
tenants:
  - id: acme
    plan: free
    apiKeys: [{{sha256: "{hash_api_key(OLD_KEY)}"}}, {{sha256: "{hash_api_key(NEW_KEY)}"}}]
    overrides: {{requestsPerMinute: 20}}
  - id: globex
    plan: pro
    apiKeys: [{{sha256: "{hash_api_key(OTHER_KEY)}"}}]
"""


@pytest.fixture
def metrics() -> AdmissionMetrics:
    return AdmissionMetrics(CollectorRegistry())


@pytest.fixture
def registry(tmp_path: Path, metrics: AdmissionMetrics) -> TenantRegistry:
    path = tmp_path / "tenants.yaml"
    path.write_text(TENANTS_YAML)
    return TenantRegistry.load(path, metrics=metrics)


def failures(metrics: AdmissionMetrics, reason: str) -> float:
    return metrics.registry.get_sample_value("glmserve_auth_failures_total", {"reason": reason}) or 0.0


def test_both_keys_of_a_rotation_authenticate(registry: TenantRegistry) -> None:
    assert registry.authenticate(f"Bearer {OLD_KEY}").id == "acme"
    assert registry.authenticate(f"bearer   {NEW_KEY}  ").id == "acme"
    assert registry.authenticate(f"Bearer {OTHER_KEY}").id == "globex"
    assert len(registry) == 2
    assert not registry.is_open


def test_plan_and_overrides_resolve(registry: TenantRegistry) -> None:
    acme, globex = registry.get("acme"), registry.get("globex")
    assert acme is not None
    assert globex is not None
    assert acme.limits.rates == Rates(20, 10000, 2000, 2)  # requestsPerMinute overridden
    assert (acme.limits.max_context_tokens, acme.priority, acme.sharing_group) == (8192, "standard", None)
    assert acme.allows("glm-4.6-tiny")
    assert not acme.allows("glm-4.6")
    assert (globex.priority, globex.sharing_group, globex.allows("anything")) == ("premium", "pro-shared", True)


@pytest.mark.parametrize(
    ("header", "reason", "code"),
    [
        (None, "missing", None),
        ("", "missing", None),
        ("   ", "missing", None),
        (f"Basic {OLD_KEY}", "malformed", "invalid_api_key"),
        ("Bearer ", "malformed", "invalid_api_key"),
        (OLD_KEY, "malformed", "invalid_api_key"),
        ("Bearer sk-old-3f9a0", "unknown", "invalid_api_key"),  # a prefix of a valid key
        (f"Bearer {OLD_KEY}x", "unknown", "invalid_api_key"),
    ],
)
def test_auth_failures_are_401(
    registry: TenantRegistry, metrics: AdmissionMetrics, header: str | None, reason: str, code: str | None
) -> None:
    with pytest.raises(AuthenticationError) as info:
        registry.authenticate(header)
    assert (info.value.kind.http_status, info.value.code) == (401, code)
    assert "sk-" not in info.value.message  # no part of the presented key is echoed
    assert failures(metrics, reason) == 1


def test_keys_never_reach_logs_or_metrics(
    tmp_path: Path, metrics: AdmissionMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "tenants.yaml"
    path.write_text(TENANTS_YAML)
    registry = TenantRegistry.from_file(path, metrics=metrics)
    for header in (f"Bearer {OLD_KEY}", f"Bearer {OLD_KEY}zz", f"Token {NEW_KEY}"):
        with contextlib.suppress(AuthenticationError):
            registry.authenticate(header)
    exported = (
        "".join(f"{s.name}{s.labels}" for family in metrics.registry.collect() for s in family.samples) + caplog.text
    )
    for secret in (OLD_KEY, NEW_KEY, hash_api_key(OLD_KEY).removeprefix("sha256:")):
        assert secret not in exported
    assert "2 tenants on 2 plans" in caplog.text


def test_secret_references_must_be_resolved_first() -> None:
    config = TenantsFile.model_validate(
        {
            "plans": [{"name": "free"}],
            "tenants": [{"id": "acme", "plan": "free", "apiKeys": [{"secretRef": {"name": "acme-key"}}]}],
        }
    )
    with pytest.raises(ConfigError, match="refers to a Secret"):
        TenantRegistry.from_config(config)


def test_a_key_shared_by_two_tenants_is_refused() -> None:
    key = {"sha256": hash_api_key(OLD_KEY)}
    config = TenantsFile.model_validate(
        {
            "plans": [{"name": "free"}],
            "tenants": [{"id": "a", "plan": "free", "apiKeys": [key]}, {"id": "b", "plan": "free", "apiKeys": [key]}],
        }
    )
    with pytest.raises(ConfigError, match="share an API key"):
        TenantRegistry.from_config(config)


@pytest.mark.parametrize(
    ("content", "message"),
    [("plans: [", "tenants file"), ("plans: []", "plans"), ("plans: [{name: Free}]", "name")],
)
def test_bad_tenants_files_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        TenantRegistry.from_file(path)
    assert str(path) in info.value.message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tenants file"):
        TenantRegistry.from_file(tmp_path / "absent.yaml")


def test_without_a_tenants_file_everyone_is_the_open_tenant(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    registry = TenantRegistry.load(None)
    assert "not authenticated" in caplog.text
    for header in (None, "Bearer anything", "garbage"):
        tenant = registry.authenticate(header)
        assert tenant.id == OPEN_TENANT_ID
        assert tenant.limits.rates.unlimited
    assert registry.is_open
    assert registry.get(OPEN_TENANT_ID) is not None


def test_reads_the_config_the_operator_renders(tmp_path: Path) -> None:
    """The router's ConfigMap holds a TenantsFile dumped by alias without unset fields."""
    config = TenantsFile.model_validate(yaml.safe_load(TENANTS_YAML))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_none=True)))
    registry = TenantRegistry.from_file(path)
    assert registry.authenticate(f"Bearer {NEW_KEY}").limits.rates == Rates(20, 10000, 2000, 2)


def test_a_plan_without_tenants_admits_nobody() -> None:
    registry = TenantRegistry.from_config(TenantsFile.model_validate({"plans": [{"name": "free"}]}))
    assert not registry.is_open
    with pytest.raises(AuthenticationError):
        registry.authenticate(f"Bearer {OLD_KEY}")
