"""The deployment's cache-salt secret: one per ModelDeployment, shared by all its ingress replicas.

Every request's prefix-cache salt is an HMAC of its tenant under this secret. Replicas with
secrets of their own would each cache a tenant's prefixes apart (a tenant's hit rate divided by
the replica count); a secret tenants could read would let one compute another's salt and probe
its cached prompts by timing. So the secret is random, made once, and lives in a Secret.
"""

from __future__ import annotations

import base64
from typing import Any

from glmserve.operator.build.inputs import DeploymentInputs
from glmserve.operator.build.meta import deployment_labels, metadata

SALT_KEY = "secret"  # the Secret's data key: the secret as hex, what GLMSERVE_CACHE_SALT_SECRET takes


def build_cache_salt_secret(inputs: DeploymentInputs, secret_hex: str) -> dict[str, Any]:
    """`secret_hex` comes from the caller (random, made once): re-rendering must never replace it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata(
            inputs.cache_salt_secret, inputs.owner, deployment_labels(inputs.name, "ingress"), inputs.namespace
        ),
        "data": {SALT_KEY: base64.b64encode(secret_hex.encode()).decode()},
    }
