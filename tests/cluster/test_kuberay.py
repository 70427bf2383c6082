"""KubeRay's pod-template -> `ray start` rules (docs/reference/kuberay.md §1), against its own examples."""

from __future__ import annotations

import base64

import pytest

from glmserve.cluster import kuberay
from glmserve.common.errors import ConfigError

HEAD = "c-head-svc.ns.svc.cluster.local"


def _group(container_resources: dict, params: dict, **extra: object) -> dict:
    container = {"name": "ray", "resources": container_resources}
    return {"rayStartParams": params, "template": {"spec": {"containers": [container]}}, **extra}


def test_head_command_is_kuberays_own_example() -> None:
    # kuberay common/pod_test.go: limits cpu 2, memory 4Gi, num-cpus "0".
    group = _group({"limits": {"cpu": "2", "memory": "4Gi"}}, {"num-cpus": "0"})
    params = kuberay.ray_start_params(group, head=True, head_address=HEAD)
    assert kuberay.ray_start_command(params, head=True).split() == [
        "ulimit",
        "-n",
        "65536;",
        "ray",
        "start",
        "--head",
        "--block",
        "--dashboard-agent-listen-port=52365",
        "--dashboard-host=0.0.0.0",
        "--memory=4294967296",
        "--metrics-export-port=8080",
        "--num-cpus=0",
    ]


def test_worker_takes_cpus_from_the_request_and_group_resources_and_labels() -> None:
    group = _group(
        {"requests": {"cpu": "1500m", "memory": "2Gi"}},
        {"num-gpus": "0", "dashboard-host": "false"},
        resources={"glmserve-pool-decode": "1", "memory": "1Gi"},
        labels={"glmserve.io/pool": "decode", "a": "b"},
    )
    params = kuberay.ray_start_params(group, head=False, head_address=HEAD)
    assert params["num-cpus"] == "2"  # rounded up
    assert params["memory"] == str(1 << 30)  # the group's resources win over the template
    assert params["address"] == f"{HEAD}:6379"
    assert params["labels"] == "a=b,glmserve.io/pool=decode"
    command = kuberay.ray_start_command(params, head=False)
    assert "--resources='{\"glmserve-pool-decode\":1}'" in command
    assert "dashboard-host" not in command  # "false" drops the flag
    assert "--head" not in command


def test_gcs_fault_tolerance_passes_the_password_through_bash() -> None:
    command = kuberay.ray_start_command({"block": "true"}, head=True, redis_password=True)
    assert command.endswith('--redis-password="$REDIS_PASSWORD"')


def test_env_resolves_secret_and_configmap_refs() -> None:
    objects = kuberay.Objects({"s": {"k": base64.b64encode(b"hidden").decode()}}, {"cm": {"x": "plain"}})
    container = {
        "env": [
            {"name": "A", "value": "1"},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "x"}}},
            {"name": "D", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": True}}},
        ]
    }
    assert kuberay.resolve_env(container, objects, "pod") == {"A": "1", "B": "hidden", "C": "plain"}
    missing = {"env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]}
    with pytest.raises(ConfigError, match="pod env E: Secret gone with key k"):
        kuberay.resolve_env(missing, objects, "pod")


def test_volume_files_materialise_configmap_items_and_secrets() -> None:
    objects = kuberay.Objects({"tls": {"tls.crt": base64.b64encode(b"CERT").decode()}}, {"cfg": {"a": "1", "b": "2"}})
    template = {
        "spec": {
            "containers": [
                {
                    "volumeMounts": [
                        {"name": "c", "mountPath": "/etc/c"},
                        {"name": "t", "mountPath": "/etc/tls"},
                        {"name": "shm", "mountPath": "/dev/shm"},
                    ],
                    "resources": {"requests": {"memory": "1Gi"}},
                }
            ],
            "volumes": [
                {"name": "c", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "a.yaml"}]}},
                {"name": "t", "secret": {"secretName": "tls"}},
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
            ],
        }
    }
    assert kuberay.volume_files(template, objects, "pod") == {
        "/etc/c": {"a.yaml": "1"},
        "/etc/tls": {"tls.crt": "CERT"},
    }
    assert kuberay.shm_bytes(template) == 2 << 30
    assert kuberay.memory_request(template) == 1 << 30
