"""The random secrets of a ModelDeployment, each in a Secret made once and never re-rendered.

The cache salt: every request's prefix-cache salt is an HMAC of its tenant under this secret.
Replicas with secrets of their own would each cache a tenant's prefixes apart (a tenant's hit rate
divided by the replica count); a secret tenants could read would let one compute another's salt and
probe its cached prompts by timing. So the secret is random, made once, and lives in a Secret.

The Ray token (KubeRay `authOptions: {mode: token}`): without it any pod that reaches the GCS or
the dashboard can run code in the cluster. KubeRay injects it into every Ray container as
RAY_AUTH_TOKEN (with RAY_AUTH_MODE=token). The operator names it rather than letting KubeRay make
one per RayCluster, so whatever else joins the cluster (`glmserve up --ray-address`) finds it under
a stable name.

The router token (glmserve.router.auth): the router serves only calls that carry it, so a pod that
merely reaches the router's port cannot deregister engines, register fake ones or forge the
Route/Complete calls that bill tenants. The router, the ingress and the engine pods get it as
GLMSERVE_ROUTER_TOKEN.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from glmserve.common.config import ROUTER_TOKEN_ENV
from glmserve.operator.build.inputs import DeploymentInputs
from glmserve.operator.build.meta import deployment_labels, metadata

SALT_KEY = "secret"  # the Secret's data key: the secret as hex, what GLMSERVE_CACHE_SALT_SECRET takes
RAY_AUTH_KEY = "auth_token"  # the key KubeRay reads (and writes in the Secrets it makes itself)
ROUTER_TOKEN_KEY = "token"


def build_cache_salt_secret(inputs: DeploymentInputs, secret_hex: str) -> dict[str, Any]:
    """`secret_hex` comes from the caller (random, made once): re-rendering must never replace it."""
    return _secret(inputs, inputs.cache_salt_secret, "ingress", SALT_KEY, secret_hex)


def build_ray_auth_secret(inputs: DeploymentInputs, token: str) -> dict[str, Any]:
    """`token` comes from the caller (random, made once): a new one would cut the running nodes apart."""
    return _secret(inputs, inputs.ray_auth_secret, "ray", RAY_AUTH_KEY, token)


def build_router_auth_secret(inputs: DeploymentInputs, token: str) -> dict[str, Any]:
    """`token` comes from the caller (random, made once): a new one would lock the running engines
    and ingresses out of the router until their pods restart."""
    return _secret(inputs, inputs.router_auth_secret, "router", ROUTER_TOKEN_KEY, token)


def router_token_env(inputs: DeploymentInputs) -> dict[str, Any]:
    """The container env that hands a pod the router's token."""
    ref = {"name": inputs.router_auth_secret, "key": ROUTER_TOKEN_KEY}
    return {"name": ROUTER_TOKEN_ENV, "valueFrom": {"secretKeyRef": ref}}


def generated_secrets(inputs: DeploymentInputs) -> dict[str, Callable[[DeploymentInputs, str], dict[str, Any]]]:
    """Each generated Secret's name and its builder, for the handler to create where missing."""
    return {
        inputs.cache_salt_secret: build_cache_salt_secret,
        inputs.ray_auth_secret: build_ray_auth_secret,
        inputs.router_auth_secret: build_router_auth_secret,
    }


def _secret(inputs: DeploymentInputs, name: str, component: str, key: str, value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata(name, inputs.owner, deployment_labels(inputs.name, component), inputs.namespace),
        "data": {key: base64.b64encode(value.encode()).decode()},
    }
