"""`cluster up` input: validated and rendered through the operator's reconciler before anything starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from glmserve.cluster.pods import topology
from glmserve.cluster.render import load, render
from glmserve.cluster.runtime import hosts_file
from glmserve.cluster.up import check_memory, plan
from glmserve.common.errors import ConfigError
from glmserve.operator.settings import OperatorSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KEY_SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "acme-api-key", "namespace": "glmserve"},
    "stringData": {"api-key": "sk-dev-acme"},
}


@pytest.fixture
def gpu_example(tmp_path: Path) -> Path:
    """The GPU example without TLS, with the tenant's key Secret it refers to."""
    for path in EXAMPLES.glob("*.yaml"):
        shutil.copy(path, tmp_path)
    deployment = tmp_path / "glm-4.6-fp8.yaml"
    deployment.write_text(deployment.read_text().replace("    tlsSecretName: glm-46-tls\n", ""))
    (tmp_path / "secret.yaml").write_text(yaml.safe_dump(KEY_SECRET))
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_renders_what_the_operator_would_apply(gpu_example: Path) -> None:
    rendered = render(load([gpu_example]), OperatorSettings())
    kinds = {o["kind"] for o in rendered.store.objects.values()}
    assert {"RayService", "Deployment", "Service", "ConfigMap", "Secret"} <= kinds
    topo = topology(rendered, limits_redis=True)
    groups = [(pod.group, n) for pod, n in topo.pods]
    assert groups == [("glmserve-redis", 1), ("headgroup", 1), ("ingress", 2), ("prefill", 1), ("decode", 1),
                      ("router", 2)]  # fmt: skip
    router = next(pod for pod, _ in topo.pods if pod.role == "router")
    assert router.command == "exec glmserve router serve --config /etc/glmserve/router/config.yaml"
    assert "tenants.yaml" in router.files["/etc/glmserve/router"]  # the router admits against the plans
    assert "glm-46-router.glmserve.svc" in router.services


def test_an_invalid_object_is_named_with_its_field(gpu_example: Path) -> None:
    _edit(gpu_example / "nodegroup-h100.yaml", "gpusPerNode: 8", "gpusPerNode: -1")
    with pytest.raises(ConfigError, match=r"NodeGroup/h100 is invalid: spec\.gpusPerNode"):
        render(load([gpu_example]), OperatorSettings())


def test_a_missing_node_group_is_named(gpu_example: Path) -> None:
    (gpu_example / "nodegroup-h200.yaml").unlink()
    with pytest.raises(ConfigError, match=r"ModelDeployment/glm-46 \(Pending\): .*h200"):
        render(load([gpu_example]), OperatorSettings())


def test_a_tenant_whose_key_secret_is_missing_is_named(gpu_example: Path) -> None:
    (gpu_example / "secret.yaml").unlink()
    with pytest.raises(ConfigError, match="Tenant/acme: Secret acme-api-key has no key api-key"):
        render(load([gpu_example]), OperatorSettings())


def test_unknown_kinds_and_paths_are_refused(gpu_example: Path) -> None:
    (gpu_example / "pod.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n")
    with pytest.raises(ConfigError, match="kind 'Pod' is not one of"):
        load([gpu_example])
    with pytest.raises(ConfigError, match="no such file or directory"):
        load([gpu_example / "missing.yaml"])


def test_memory_requests_beyond_the_machine_fail_before_starting(gpu_example: Path) -> None:
    topo = topology(render(load([gpu_example]), OperatorSettings()), limits_redis=True)
    with pytest.raises(ConfigError, match=r"the pods request .* GiB of memory .*decode 128\.0 GiB.* this machine has"):
        check_memory(topo, 64 << 30)
    with pytest.raises(ConfigError, match="GiB of memory"):
        plan([gpu_example], {})  # 2 x 128 GiB GPU workers do not fit this machine either


def test_hosts_file_resolves_a_service_to_every_pod_it_selects(gpu_example: Path) -> None:
    import ipaddress

    from glmserve.cluster.hosts import Host

    topo = topology(render(load([gpu_example]), OperatorSettings()), limits_redis=True)
    router = next(pod for pod, _ in topo.pods if pod.role == "router")
    hosts = [
        Host(f"r{i}", router, f"glms-r{i}", f"glmsv{i}", ipaddress.IPv4Interface(f"10.213.0.{i + 2}/24"), Path())
        for i in range(2)
    ]
    lines = hosts_file(hosts).splitlines()
    resolving = [line.split()[0] for line in lines if "glm-46-router.glmserve.svc" in line.split()]
    assert resolving == ["10.213.0.2", "10.213.0.3"]
