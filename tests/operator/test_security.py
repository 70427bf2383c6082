"""What the operator renders to keep the deployment closed: the router's token (every caller of
the router holds it, nobody else)."""

from __future__ import annotations

import base64
from typing import Any

from glmserve.operator.build.children import build_children
from glmserve.operator.build.random_secrets import ROUTER_TOKEN_KEY, build_router_auth_secret, generated_secrets
from glmserve.operator.build.rayservice import build_rayservice
from tests.operator.conftest import example_inputs
from tests.operator.k8s_checks import CustomResourceSchemas, manifest_problems


def _token_refs(container: dict[str, Any]) -> list[Any]:
    return [e.get("valueFrom") for e in container.get("env", []) if e["name"] == "GLMSERVE_ROUTER_TOKEN"]


def test_the_router_token_is_a_generated_secret_held_by_the_router_and_its_callers_only(
    schemas: CustomResourceSchemas,
) -> None:
    inputs = example_inputs()
    assert inputs.router_auth_secret in generated_secrets(inputs)
    secret = build_router_auth_secret(inputs, "cd" * 32)
    assert manifest_problems(secret, schemas) == []
    assert base64.b64decode(secret["data"][ROUTER_TOKEN_KEY]).decode() == "cd" * 32
    ref = {"secretKeyRef": {"name": inputs.router_auth_secret, "key": ROUTER_TOKEN_KEY}}
    router = next(c for c in build_children(inputs, None, None) if c["kind"] == "Deployment")
    assert _token_refs(router["spec"]["template"]["spec"]["containers"][0]) == [ref]
    cluster = build_rayservice(inputs, None)["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]}
    assert {name: _token_refs(c) for name, c in groups.items()} == {"ingress": [ref], "prefill": [ref], "decode": [ref]}
    # The head runs no replica that calls the router.
    assert _token_refs(cluster["headGroupSpec"]["template"]["spec"]["containers"][0]) == []
