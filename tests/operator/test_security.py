"""What the operator renders to keep the deployment closed: the router's token (every caller of
the router holds it, nobody else) and its NetworkPolicy (nobody else reaches it)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from glmserve.operator.build.children import build_children
from glmserve.operator.build.meta import deployment_labels
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


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector's meaning (matchLabels and In/NotIn/Exists/DoesNotExist expressions)."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        held = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values}
        held |= {"Exists": key in labels, "DoesNotExist": key not in labels}
        if not held[op]:
            return False
    return True


def test_only_the_deployments_ingress_and_engines_reach_the_routers_grpc_port(schemas: CustomResourceSchemas) -> None:
    inputs = example_inputs()
    children = build_children(inputs, None, None)
    [policy] = [c for c in children if c["kind"] == "NetworkPolicy"]
    assert manifest_problems(policy, schemas) == []
    router = next(c for c in children if c["kind"] == "Deployment")["spec"]["template"]
    assert _selects(policy["spec"]["podSelector"], router["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # the router still dials Redis and the engines
    ports = {p["name"]: p["containerPort"] for p in router["spec"]["containers"][0]["ports"]}
    rules = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(rules) == {ports["grpc"], ports["metrics"]}

    cluster = build_rayservice(inputs, None)["spec"]["rayClusterConfig"]
    pods = {g["groupName"]: g["template"]["metadata"]["labels"] for g in cluster["workerGroupSpecs"]}
    pods["head"] = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
    pods["another deployment's ingress"] = deployment_labels("other", "ingress")
    pods["router"] = router["metadata"]["labels"]
    [grpc_peers] = rules[ports["grpc"]]
    assert set(grpc_peers) == {"podSelector"}  # this namespace only
    reach = {name for name, labels in pods.items() if _selects(grpc_peers["podSelector"], labels)}
    assert reach == {"ingress", "prefill", "decode"}
    [scraper] = rules[ports["metrics"]]
    assert scraper == {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }


def test_the_tls_secret_is_mounted_readable_by_the_pods_group_only(schemas: CustomResourceSchemas) -> None:
    """defaultMode 0440 with fsGroup: root owns the files, the pod's user reads them through its
    group (fsGroup joins its supplementary groups), so clusters still start and nothing else reads the key."""
    for tls in (True, False):
        cluster = build_rayservice(example_inputs(tls=tls), None)["spec"]["rayClusterConfig"]
        pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
        for pod in pods:
            security = pod["spec"]["securityContext"]
            assert security["runAsNonRoot"] is True
            volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
            if not tls:
                assert "tls" not in volumes and "fsGroup" not in security
                continue
            assert volumes["tls"]["secret"]["defaultMode"] == 0o440
            assert (security["fsGroup"], security["fsGroupChangePolicy"]) == (1000, "OnRootMismatch")
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": pod}
            assert manifest_problems(wrapped, schemas) == []
    dockerfile = (Path(__file__).parents[2] / "images" / "serving" / "Dockerfile").read_text()
    assert "\nUSER 1000:" in dockerfile  # the fsGroup's reader
