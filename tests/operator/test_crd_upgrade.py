"""Upgrading the CRDs with the chart: Helm never upgrades `crds/`, so a pre-upgrade hook Job applies
them with the operator image. The chart renders the hook (validated, least privilege, carrying exactly
`crds/`), and the hook's command, run as a process against kmock, brings an old CRD up to date."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from glmserve.operator.crds import MODEL_DEPLOYMENT, build_crd
from tests.operator.conftest import CHART
from tests.operator.k8s_checks import CustomResourceSchemas, manifest_problems
from tests.operator.kube import KmockCluster
from tests.operator.test_chart import NAMESPACE, render_chart

CRDS = CHART / "crds"
CRD = ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
HOOK = "glmserve-operator-crd-upgrade"


def _hooks(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})}


def test_hook_applies_exactly_the_charts_crds_before_the_upgrade(chart_schemas: CustomResourceSchemas) -> None:
    hooks = _hooks(render_chart())
    assert set(hooks) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Job"}
    assert [p for doc in hooks.values() for p in manifest_problems(doc, chart_schemas)] == []
    for doc in hooks.values():
        assert doc["metadata"]["name"] == HOOK
        assert doc["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"  # never on install: crds/ does that
    # Everything the Job needs exists before it runs.
    weight = {kind: int(doc["metadata"]["annotations"]["helm.sh/hook-weight"]) for kind, doc in hooks.items()}
    assert max(w for kind, w in weight.items() if kind != "Job") < weight["Job"]
    assert hooks["ConfigMap"]["data"] == {p.name: p.read_text() for p in CRDS.glob("*.yaml")}

    pod = hooks["Job"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == HOOK
    (container,) = pod["containers"]
    assert container["command"][:3] == ["python", "-m", "glmserve.operator.crd_upgrade"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == container["command"][3])
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == HOOK

    binding = hooks["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == HOOK
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": HOOK, "namespace": NAMESPACE}]
    patch, create = hooks["ClusterRole"]["rules"]
    assert patch["verbs"] == ["get", "patch"]
    assert sorted(patch["resourceNames"]) == sorted(
        yaml.safe_load(p.read_text())["metadata"]["name"] for p in CRDS.glob("*.yaml")
    )
    assert create["verbs"] == ["create"] and "resourceNames" not in create


def test_hook_is_optional() -> None:
    assert _hooks(render_chart("--set", "crds.upgrade=false")) == {}


@pytest.fixture
def kmock(tmp_path: Path) -> Iterator[KmockCluster]:
    with KmockCluster([], tmp_path) as cluster:
        yield cluster


def test_hook_command_upgrades_an_old_crd(kmock: KmockCluster) -> None:
    new = build_crd(MODEL_DEPLOYMENT)
    old = copy.deepcopy(new)
    spec_schema = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    field = next(iter(spec_schema["properties"]))
    del spec_schema["properties"][field]  # a release before this field existed
    kmock.api.create(old)

    env = {**os.environ, "KUBECONFIG": str(kmock.kubeconfig)}
    result = subprocess.run(
        [sys.executable, "-m", "glmserve.operator.crd_upgrade", str(CRDS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for path in CRDS.glob("*.yaml"):
        wanted = yaml.safe_load(path.read_text())
        applied = kmock.api.get(*CRD, wanted["metadata"]["name"])
        assert applied is not None, f"{path.name} was not created"
        assert applied["spec"] == wanted["spec"]
    assert (
        field
        in kmock.api.get(*CRD, new["metadata"]["name"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
            "properties"
        ]["spec"]["properties"]
    )


def test_hook_command_names_its_argument() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "glmserve.operator.crd_upgrade", "/nonexistent"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "a directory of CRD YAML files" in result.stderr
