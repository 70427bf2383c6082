"""The Helm chart: lints strictly, renders manifests the API server would accept, least-privilege
RBAC, a values schema that rejects bad values, and ships the dashboards (tests/dashboards checks them)."""

from __future__ import annotations

import subprocess
import tomllib
from typing import Any

import pytest
import yaml

from glmserve import __version__
from glmserve.common.deployment import Images
from glmserve.common.tenancy import Plan, TenantsFile
from glmserve.dashboards import DASHBOARDS
from glmserve.dashboards import render as render_dashboard
from glmserve.operator.build.children import build_children
from glmserve.operator.settings import OperatorSettings
from tests.operator.conftest import CHART, REPO_ROOT, example_inputs, tool
from tests.operator.k8s_checks import CustomResourceSchemas, manifest_problems

RELEASE, NAMESPACE = "glm", "glmserve-system"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool("helm")), *args], capture_output=True, text=True, check=False)


def render_chart(*values: str) -> list[dict[str, Any]]:
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds", *values)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.load_all(result.stdout, Loader=yaml.CSafeLoader) if doc]


def test_helm_lint_strict() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


VALUE_SETS = {
    "defaults": [],
    "redis-and-debug": ["--set", "redis.enabled=true", "--set", "operator.logLevel=debug"],
    "external-redis-single-replica": [
        "--set",
        "externalRedisUrl=rediss://redis.example:6380/0",
        "--set",
        "operator.replicas=1",
        "--set",
        "dashboards.enabled=false",
        "--set",
        "crds.upgrade=false",
    ],
}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_manifests_validate_strictly(chart_schemas: CustomResourceSchemas, values: list[str]) -> None:
    docs = render_chart(*values)
    assert [p for doc in docs for p in manifest_problems(doc, chart_schemas)] == []
    crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert crds == {
        "nodegroups.glmserve.io",
        "modeldeployments.glmserve.io",
        "plans.glmserve.io",
        "tenants.glmserve.io",
        "clusterkopfpeerings.kopf.dev",
    }


def _operator(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "glmserve-operator")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_operator_runs_with_leader_election_and_valid_settings() -> None:
    docs = render_chart("--set", "redis.enabled=true", "--set", "defaults.router.replicas=3")
    container = _operator(docs)
    assert container["command"] == ["kopf"]
    assert "--peering=glmserve" in container["args"]
    assert container["args"][-2:] == ["-m", "glmserve.operator.main"]
    assert any(d["kind"] == "ClusterKopfPeering" and d["metadata"]["name"] == "glmserve" for d in docs)
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = OperatorSettings.from_env(env)  # the names and values the operator accepts
    assert settings.router_replicas == 3
    assert settings.redis_url == f"redis://{RELEASE}-redis.{NAMESPACE}.svc:6379/0"
    images = settings.images(Images())
    assert (images.serving, images.router) == (f"ghcr.io/glmserve/serving:{__version__}", container["image"])


def test_a_registry_override_and_pull_secrets_reach_the_operator_and_its_pods() -> None:
    docs = render_chart(
        "--set", "images.registry=mirror.example:5000/ai", "--set", "images.pullSecrets={mirror,backup}"
    )
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "mirror"}, {"name": "backup"}]
    assert pod["containers"][0]["image"] == f"mirror.example:5000/ai/operator:{__version__}"
    settings = OperatorSettings.from_env({e["name"]: e["value"] for e in pod["containers"][0]["env"]})
    images = settings.images(Images(pull_secrets=["team"]))
    assert images.serving == f"mirror.example:5000/ai/serving:{__version__}"
    assert images.pull_secrets == ("mirror", "backup", "team")
    # A whole reference wins over the registry.
    docs = render_chart("--set", "images.serving=cuda.example/serving:nightly", "--set", "images.tag=0.2.0")
    env = {e["name"]: e["value"] for e in _operator(docs)["env"]}
    assert env["GLMSERVE_OPERATOR_SERVING_IMAGE"] == "cuda.example/serving:nightly"
    assert env["GLMSERVE_OPERATOR_ROUTER_IMAGE"] == "ghcr.io/glmserve/operator:0.2.0"


def test_the_default_tags_are_the_package_version() -> None:
    """pyproject.toml, glmserve.__version__ and the chart's appVersion (the images' default tag) agree."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert project["version"] == __version__ == chart["appVersion"] == chart["version"]
    assert _operator(render_chart())["image"] == f"ghcr.io/glmserve/operator:{__version__}"
    assert OperatorSettings().images(Images()).router == f"ghcr.io/glmserve/operator:{__version__}"


def rbac_rules(docs: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """What the operator's ClusterRole grants: (API group, resource) -> verbs."""
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "glmserve-operator")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


# What the operator does with each resource (kopf's watches, the reconcilers' reads and writes).
EXPECTED_RBAC = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    ("glmserve.io", "nodegroups"): {"get", "list", "watch", "patch"},
    ("glmserve.io", "modeldeployments"): {"get", "list", "watch", "patch"},
    ("glmserve.io", "plans"): {"list", "watch"},
    ("glmserve.io", "tenants"): {"get", "list", "watch", "patch"},
    ("glmserve.io", "nodegroups/status"): {"patch"},
    ("glmserve.io", "modeldeployments/status"): {"patch"},
    ("glmserve.io", "tenants/status"): {"patch"},
    ("", "nodes"): {"list", "watch"},
    ("", "pods"): {"list"},
    ("", "pods/proxy"): {"get"},
    ("", "secrets"): {"get", "create"},
    ("", "events"): {"create"},
    ("", "services"): {"get", "list", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "create", "patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "create", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create", "patch"},
    ("ray.io", "rayservices"): {"get", "list", "watch", "create", "patch"},
    ("monitoring.coreos.com", "servicemonitors"): {"get", "create", "patch"},
    ("monitoring.coreos.com", "podmonitors"): {"get", "create", "patch"},
    ("monitoring.coreos.com", "prometheusrules"): {"get", "create", "patch"},
    ("karpenter.sh", "nodepools"): {"get", "create", "patch", "delete"},
}


def test_rbac_is_exactly_what_the_operator_uses() -> None:
    granted = rbac_rules(render_chart())
    assert not [key for key, verbs in granted.items() if "*" in key[0] + key[1] or "*" in verbs]
    assert granted == EXPECTED_RBAC
    # Every kind a ModelDeployment renders can be created and patched.
    tenancy = TenantsFile(plans=[Plan(name="pro")])
    for child in build_children(example_inputs(), tenancy, None):
        group = child["apiVersion"].rpartition("/")[0]
        kind = child["kind"].lower()
        plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
        assert {"get", "create", "patch"} <= granted[(group, plural)], child["kind"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "operator.replicas=0"], "at '/operator/replicas': minimum: got 0, want 1"),
        (["--set", "operator.logLevel=loud"], "at '/operator/logLevel': value must be one of 'quiet', 'info'"),
        (["--set", "defaults.rayVersion=latest"], "at '/defaults/rayVersion': 'latest' does not match pattern"),
        (
            ["--set", "redis.enabled=true", "--set", "externalRedisUrl=redis://elsewhere:6379"],
            "at '/externalRedisUrl': maxLength: got 22, want 0",
        ),
        (["--set", "externalRedisUrl=http://redis:6379"], "at '/externalRedisUrl': 'http://redis:6379' does not match"),
        (["--set", "operator.replica=2"], "at '/operator': additional properties 'replica' not allowed"),
        (["--set", "images.pullSecrets={Bad_Name}"], "at '/images/pullSecrets/0': 'Bad_Name' does not match pattern"),
        (["--set", "images.registry=GHCR.io"], "at '/images/registry': 'GHCR.io' does not match"),
    ],
    ids=["zero-replicas", "log-level", "ray-version", "two-redises", "redis-scheme", "typo", "pull-secret", "registry"],
)
def test_values_schema_rejects_bad_values(values: list[str], message: str) -> None:
    result = helm("template", RELEASE, str(CHART), *values)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def test_dashboards_are_config_maps_for_grafanas_sidecar() -> None:
    """The chart ships every generated dashboard (charts/glmserve/dashboards links to dashboards/)."""
    maps = [d for d in render_chart() if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]]
    assert {m["metadata"]["labels"]["grafana_dashboard"] for m in maps} == {"1"}
    shipped = {key: text for m in maps for key, text in m["data"].items()}
    assert shipped == {d.filename: render_dashboard(d).rstrip("\n") for d in DASHBOARDS}
