"""The session stack's plans and tenants: keys generated per run, stored only as hashes."""

from __future__ import annotations

import secrets
from pathlib import Path

import yaml

from glmserve.common.tenancy import hash_api_key

TENANTS = (
    "test",
    "rpm",
    "rpm-probe",
    "small",
    "nomodel",
    "tokens",
    "acme",
    "beta",
    "team-a1",
    "team-a2",
    "outage",
    "hangup",
)
KEYS = {tenant: f"sk-{tenant}-{secrets.token_hex(12)}" for tenant in TENANTS}
RPM = 3
OUTPUT_TPM = 120

PLANS = [
    {"name": "unlimited", "priority": "premium"},
    {"name": "tiny-rpm", "requestsPerMinute": RPM},
    {"name": "small", "maxOutputTokens": 16, "maxContextTokens": 256},
    {"name": "other-model", "allowedModels": ["glm-4.6"]},
    {"name": "tokens", "outputTokensPerMinute": OUTPUT_TPM},
    {"name": "team", "cacheSharingGroup": "team-a"},
    # its own plan label: the ingress counts the tokens billed to it apart
    {"name": "hangup", "outputTokensPerMinute": 1_000_000},
]
PLAN_OF = {"test": "unlimited", "rpm": "tiny-rpm", "rpm-probe": "tiny-rpm", "small": "small", "nomodel": "other-model",
           "tokens": "tokens",
           "acme": "unlimited", "beta": "unlimited", "team-a1": "team", "team-a2": "team", "outage": "tiny-rpm",
           "hangup": "hangup"}  # fmt: skip


def write_tenants(path: Path) -> Path:
    tenants = [{"id": t, "plan": PLAN_OF[t], "apiKeys": [{"sha256": hash_api_key(KEYS[t])}]} for t in TENANTS]
    path.write_text(yaml.safe_dump({"plans": PLANS, "tenants": tenants}))
    return path
