"""What KubeRay does to a RayService's pod templates, as pure functions (docs/reference/kuberay.md §1, §3, §4).

Each worker-group replica and the head become a `bash -c "ulimit -n 65536; ray start ..."` process
with the env KubeRay injects and the rendered container's own env, secretKeyRef/configMapKeyRef
resolved against the rendered Secrets and ConfigMaps.
"""

from __future__ import annotations

import base64
import json
import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from glmserve.common.errors import ConfigError

GCS_PORT = 6379
DASHBOARD_PORT = 8265
AGENT_PORT = 52365
METRICS_PORT = 8080
AUTH_TOKEN_KEY = "auth_token"  # KubeRay's key in the auth Secret
# Env KubeRay sets on the Ray containers of a RayService only (pod.go setContainerEnvVars).
RAYSERVICE_ENV = {
    "RAY_timeout_ms_task_wait_for_death_info": "0",
    "RAY_gcs_server_request_timeout_seconds": "5",
    "RAY_SERVE_KV_TIMEOUT_S": "5",
}
WORKER_GCS_RECONNECT_S = "600"  # KubeRay's RAY_gcs_rpc_server_reconnect_timeout_s for workers under GCS FT


@dataclass(frozen=True, slots=True)
class Objects:
    """The rendered Secrets and ConfigMaps of one namespace, by name (Secrets' data still base64)."""

    secrets: Mapping[str, Mapping[str, str]]
    configmaps: Mapping[str, Mapping[str, str]]

    def secret(self, name: str, key: str, where: str) -> str:
        data = self.secrets.get(name)
        if data is None or key not in data:
            raise ConfigError(f"{where}: Secret {name} with key {key} is not among the objects given")
        return base64.b64decode(data[key]).decode()

    def configmap(self, name: str, key: str, where: str) -> str:
        data = self.configmaps.get(name)
        if data is None or key not in data:
            raise ConfigError(f"{where}: ConfigMap {name} with key {key} is not among the objects given")
        return data[key]


def head_service(cluster_name: str, namespace: str) -> str:
    return f"{cluster_name}-head-svc.{namespace}.svc.cluster.local"


def _quantity_params(container: dict[str, Any]) -> dict[str, str]:
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    params = {}
    cpu = limits.get("cpu") or requests.get("cpu")
    if cpu is not None:
        params["num-cpus"] = str(math.ceil(parse_quantity(cpu)))
    if "memory" in limits:
        params["memory"] = str(int(parse_quantity(limits["memory"])))
    gpu = next((k for k in limits if k.endswith("gpu")), None)
    if gpu is not None:
        params["num-gpus"] = str(int(parse_quantity(limits[gpu])))
    return params


def _group_resources(resources: dict[str, str]) -> dict[str, str]:
    """The group's `resources:` (KubeRay v1.5+): cpu/memory/GPUs become flags, the rest `--resources`."""
    params: dict[str, str] = {}
    custom: dict[str, float | int] = {}
    for name, value in resources.items():
        amount = parse_quantity(value)
        if name == "cpu":
            params["num-cpus"] = str(math.ceil(amount))
        elif name == "memory":
            params["memory"] = str(int(amount))
        elif name.endswith("gpu"):
            params["num-gpus"] = str(int(amount))
        else:
            custom[name] = int(amount) if amount == int(amount) else float(amount)
    if custom:
        params["resources"] = json.dumps(custom, separators=(",", ":"))
    return params


def ray_start_params(group: dict[str, Any], *, head: bool, head_address: str) -> dict[str, str]:
    """`rayStartParams` completed as KubeRay completes them (flags it adds only where absent)."""
    container = group["template"]["spec"]["containers"][0]
    params = {**_quantity_params(container), **_group_resources(group.get("resources") or {})}
    params |= {k: str(v) for k, v in (group.get("rayStartParams") or {}).items()}
    labels = group.get("labels") or {}
    if labels:
        params.setdefault("labels", ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
    if head:
        params.setdefault("dashboard-host", "0.0.0.0")
    else:
        params.setdefault("address", f"{head_address}:{GCS_PORT}")
    params.setdefault("metrics-export-port", str(METRICS_PORT))
    params.setdefault("dashboard-agent-listen-port", str(AGENT_PORT))
    params.setdefault("block", "true")
    return params


def ray_start_command(params: dict[str, str], *, head: bool, redis_password: bool = False) -> str:
    """The container's one bash argument: sorted keys, "true" a bare flag, "false" dropped."""
    parts = ["ray", "start"] + (["--head"] if head else [])
    for key in sorted(params):
        value = params[key]
        if value == "true":
            parts.append(f"--{key}")
        elif value != "false":
            parts.append(f"--{key}={shlex.quote(value)}")
    if redis_password:
        parts.append('--redis-password="$REDIS_PASSWORD"')
    return "ulimit -n 65536; " + " ".join(parts)


def resolve_env(container: dict[str, Any], objects: Objects, where: str) -> dict[str, str]:
    """The container's env with `valueFrom` resolved (an optional ref that is missing is left out)."""
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        source = var.get("valueFrom") or {}
        field = f"{where} env {var['name']}"
        try:
            if ref := source.get("secretKeyRef"):
                env[var["name"]] = objects.secret(ref["name"], ref["key"], field)
            elif ref := source.get("configMapKeyRef"):
                env[var["name"]] = objects.configmap(ref["name"], ref["key"], field)
            else:
                raise ConfigError(f"{field}: only value, secretKeyRef and configMapKeyRef are supported")
        except ConfigError:
            if not (source.get("secretKeyRef") or source.get("configMapKeyRef") or {}).get("optional"):
                raise
    return env


def kuberay_env(cluster_name: str, namespace: str, pod: str, group: str, head_address: str) -> dict[str, str]:
    head = group == "headgroup"
    env = {
        "RAY_CLUSTER_NAME": cluster_name,
        "RAY_CLUSTER_NAMESPACE": namespace,
        "RAY_CLOUD_INSTANCE_ID": pod,
        "RAY_NODE_TYPE_NAME": group,
        "RAY_PORT": str(GCS_PORT),
        "RAY_ADDRESS": f"127.0.0.1:{GCS_PORT}" if head else f"{head_address}:{GCS_PORT}",
        "RAY_USAGE_STATS_KUBERAY_IN_USE": "1",
        **RAYSERVICE_ENV,
    }
    if not head:
        env |= {"FQ_RAY_IP": head_address, "RAY_IP": head_address.split(".", maxsplit=1)[0]}
    return env


def volume_files(template: dict[str, Any], objects: Objects, where: str) -> dict[str, dict[str, str]]:
    """mountPath -> {file name: content} for each Secret/ConfigMap volume the container mounts."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes") or []}
    files: dict[str, dict[str, str]] = {}
    for container in template["spec"]["containers"][:1]:
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            if "secret" in volume:
                source, name = objects.secrets.get(volume["secret"]["secretName"]), volume["secret"]["secretName"]
                decode = True
                spec = volume["secret"]
            elif "configMap" in volume:
                source, name = objects.configmaps.get(volume["configMap"]["name"]), volume["configMap"]["name"]
                decode = False
                spec = volume["configMap"]
            else:
                continue  # emptyDir (/dev/shm: every host has its own) or a claim: the shared filesystem
            if source is None:
                if spec.get("optional"):
                    files[mount["mountPath"]] = {}
                    continue
                raise ConfigError(f"{where} volume {mount['name']}: {name} is not among the objects given")
            items = spec.get("items") or [{"key": k, "path": k} for k in source]
            content = {}
            for item in items:
                if item["key"] not in source:
                    if spec.get("optional"):
                        continue
                    raise ConfigError(f"{where} volume {mount['name']}: {name} has no key {item['key']}")
                value = source[item["key"]]
                content[item["path"]] = base64.b64decode(value).decode() if decode else value
            files[mount["mountPath"]] = content
    return files


def claim_mounts(template: dict[str, Any]) -> dict[str, str]:
    """mountPath -> PersistentVolumeClaim name, for each claim the container mounts."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes") or []}
    container = template["spec"]["containers"][0]
    return {
        m["mountPath"]: volumes[m["name"]]["persistentVolumeClaim"]["claimName"]
        for m in container.get("volumeMounts") or []
        if "persistentVolumeClaim" in volumes[m["name"]]
    }


def shm_bytes(template: dict[str, Any]) -> int:
    """/dev/shm's size: the template's Memory emptyDir there, else the memory limit, else the request
    (KubeRay's addEmptyDir), else 1 GiB."""
    container = template["spec"]["containers"][0]
    volumes = {v["name"]: v for v in template["spec"].get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        size = ((volumes.get(mount["name"]) or {}).get("emptyDir") or {}).get("sizeLimit")
        if mount["mountPath"] == "/dev/shm" and size:
            return int(parse_quantity(size))
    resources = container.get("resources") or {}
    memory = (resources.get("limits") or {}).get("memory") or (resources.get("requests") or {}).get("memory")
    return int(parse_quantity(memory)) if memory else 1 << 30


def memory_request(template: dict[str, Any]) -> int:
    total = 0
    for container in template["spec"]["containers"]:
        memory = ((container.get("resources") or {}).get("requests") or {}).get("memory")
        total += int(parse_quantity(memory)) if memory else 0
    return total
