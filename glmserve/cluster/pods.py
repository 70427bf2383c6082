"""The pods a rendered deployment runs, as KubeRay, the Deployment controller and the platform's
Redis would create them: each becomes one host (`Pod`: what to run there, with which env and files)."""

from __future__ import annotations

import base64
import secrets
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from glmserve.cluster import kuberay
from glmserve.cluster.render import Rendered
from glmserve.common.errors import ConfigError

REDIS_PORT = 6379
LIMITS_REDIS = "glmserve-redis"  # the rate limits' Redis (the operator's GLMSERVE_OPERATOR_REDIS_URL)
REDIS_MEMORY = 256 << 20


@dataclass(frozen=True, slots=True)
class Pod:
    """One pod template; each host made from it gets `prefix` + a random suffix as its name."""

    prefix: str
    role: str  # head | worker | router | redis
    group: str  # Ray group (headgroup, ingress, prefill, decode), "router", or the Redis's name
    command: str  # bash -c argument
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # mountPath -> {file: content}
    claims: dict[str, str] = field(default_factory=dict)  # mountPath -> directory (a claim's volume)
    shm_bytes: int = 64 << 20
    memory_bytes: int = 0  # the pod's memory request
    services: tuple[str, ...] = ()  # DNS names that resolve to this pod (Services selecting it)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Topology:
    namespace: str
    cluster_name: str  # the RayCluster KubeRay would create: <rayservice>-<5 chars>
    head_address: str  # the head Service's FQDN
    pods: tuple[tuple[Pod, int], ...]  # (template, replicas), in start order: Redis, head, workers, router
    serve_config: dict[str, Any]
    auth_token: str | None
    ingress_service: str
    base_path: str = "/v1"

    def replicas(self, role: str) -> list[tuple[Pod, int]]:
        return [(p, n) for p, n in self.pods if p.role == role]


def suffix(n: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' generateName alphabet
    return "".join(secrets.choice(alphabet) for _ in range(n))


def redis_pod(name: str, namespace: str, password: str | None) -> Pod:
    auth = f" --requirepass {shlex.quote(password)}" if password else ""
    command = (
        f"exec redis-server --bind 0.0.0.0 --port {REDIS_PORT} --save '' --appendonly no --protected-mode no{auth}"
    )
    return Pod(
        prefix=name, role="redis", group=name, command=command, memory_bytes=REDIS_MEMORY,
        services=(f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"),
    )  # fmt: skip


def _auth_token(cluster: dict[str, Any], objects: kuberay.Objects) -> str | None:
    options = cluster.get("authOptions") or {}
    if options.get("mode") != "token":
        return None
    if name := options.get("secretName"):
        return objects.secret(name, kuberay.AUTH_TOKEN_KEY, "RayService spec.rayClusterConfig.authOptions.secretName")
    # KubeRay makes a Secret named after the RayCluster holding base64(32 random bytes).
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _gcs_redis(cluster: dict[str, Any], namespace: str, objects: kuberay.Objects) -> tuple[Pod, dict[str, str]] | None:
    """KubeRay's GCS fault tolerance: the Redis it names (run here as a host of its own) and the head's env."""
    options = cluster.get("gcsFaultToleranceOptions")
    if not options:
        return None
    address = options["redisAddress"].removeprefix("redis://")
    host = address.rsplit(":", 1)[0]
    password = None
    if pw := options.get("redisPassword"):
        env = kuberay.resolve_env({"env": [{"name": "REDIS_PASSWORD", **pw}]}, objects, "gcsFaultToleranceOptions")
        password = env.get("REDIS_PASSWORD")
    name = host.split(".")[0]
    pod = redis_pod(name, namespace, password)
    pod = replace(pod, services=(*pod.services, host))
    env = {
        "RAY_REDIS_ADDRESS": options["redisAddress"],
        "RAY_external_storage_namespace": options.get("externalStorageNamespace") or secrets.token_hex(8),
    }
    if password:
        env["REDIS_PASSWORD"] = password
    return pod, env


def _claims(template: dict[str, Any], volumes: dict[str, Path], where: str) -> dict[str, str]:
    """A claim's volume is a directory of this machine (`--volume CLAIM=DIR`), as a hostPath PV would be."""
    mounts = {}
    for path, claim in kuberay.claim_mounts(template).items():
        if claim not in volumes:
            raise ConfigError(
                f"{where} mounts PersistentVolumeClaim {claim}: give its directory with --volume {claim}=DIR"
            )
        if not volumes[claim].is_dir():
            raise ConfigError(f"--volume {claim}={volumes[claim]}: no such directory")
        mounts[path] = str(volumes[claim])
    return mounts


def _ray_pod(
    group: dict[str, Any], *, cluster_name: str, namespace: str, head_address: str, objects: kuberay.Objects,
    extra_env: dict[str, str], volumes: dict[str, Path],
) -> Pod:  # fmt: skip
    head = "groupName" not in group
    name = "headgroup" if head else group["groupName"]
    template = group["template"]
    container = template["spec"]["containers"][0]
    where = f"RayService {'headGroupSpec' if head else 'workerGroupSpecs[' + name + ']'}"
    params = kuberay.ray_start_params(group, head=head, head_address=head_address)
    pod_prefix = f"{cluster_name}-head" if head else f"{cluster_name}-{name}-worker"
    env = {
        **kuberay.kuberay_env(cluster_name, namespace, pod_prefix, name, head_address),
        **kuberay.resolve_env(container, objects, where),
        **extra_env,
    }
    return Pod(
        prefix=pod_prefix,
        role="head" if head else "worker",
        group=name,
        command=kuberay.ray_start_command(params, head=head, redis_password=head and "REDIS_PASSWORD" in env),
        env=env,
        files=kuberay.volume_files(template, objects, where),
        claims=_claims(template, volumes, where),
        shm_bytes=kuberay.shm_bytes(template),
        memory_bytes=kuberay.memory_request(template),
        services=(head_address,) if head else (),
        labels=dict(template.get("metadata", {}).get("labels") or {}),
    )


def topology(rendered: Rendered, limits_redis: bool, volumes: dict[str, Path] | None = None) -> Topology:
    ns = rendered.namespace
    objects = kuberay.Objects(rendered.data("Secret"), rendered.data("ConfigMap"))
    service = rendered.one("RayService")
    cluster = service["spec"]["rayClusterConfig"]
    cluster_name = f"{service['metadata']['name']}-{suffix()}"
    head_address = kuberay.head_service(cluster_name, ns)
    token = _auth_token(cluster, objects)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {}
    pods: list[tuple[Pod, int]] = []
    if limits_redis:
        pods.append((redis_pod(LIMITS_REDIS, ns, None), 1))
    head_env = dict(auth)
    worker_env = dict(auth)
    if gcs := _gcs_redis(cluster, ns, objects):
        pods.append((gcs[0], 1))
        head_env |= gcs[1]
        worker_env["RAY_gcs_rpc_server_reconnect_timeout_s"] = kuberay.WORKER_GCS_RECONNECT_S
    common = {
        "cluster_name": cluster_name, "namespace": ns, "head_address": head_address, "objects": objects,
        "volumes": volumes or {},
    }  # fmt: skip
    pods.append((_ray_pod(cluster["headGroupSpec"], **common, extra_env=head_env), 1))  # type: ignore[arg-type]
    for group in cluster.get("workerGroupSpecs") or []:
        pods.append((_ray_pod(group, **common, extra_env=worker_env), int(group.get("replicas", 1))))  # type: ignore[arg-type]
    router = rendered.one("Deployment")
    pods.append((_router_pod(router, rendered, objects), int(router["spec"].get("replicas", 1))))
    ingress = rendered.one("Service", f"{rendered.deployment}-ingress")
    services = rendered.store.of_kind("Service")
    return Topology(
        namespace=ns,
        cluster_name=cluster_name,
        head_address=head_address,
        pods=tuple((with_services(pod, services, ns), n) for pod, n in pods),
        serve_config=yaml.safe_load(service["spec"]["serveConfigV2"]),
        auth_token=token,
        ingress_service=f"{ingress['metadata']['name']}.{ns}.svc",
    )


def with_services(pod: Pod, services: list[dict[str, Any]], namespace: str) -> Pod:
    """Cluster DNS: a Service's name resolves to the pods its selector matches (every one of them,
    headless or not: a virtual IP would balance over the same pods)."""
    names = [
        f"{s['metadata']['name']}.{namespace}.svc{tail}"
        for s in services
        if s["spec"].get("selector") and s["spec"]["selector"].items() <= pod.labels.items()
        for tail in ("", ".cluster.local")
    ]
    return replace(pod, services=(*pod.services, *names)) if names else pod


def _router_pod(deployment: dict[str, Any], rendered: Rendered, objects: kuberay.Objects) -> Pod:
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    name = deployment["metadata"]["name"]
    where = f"Deployment {name}"
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    if not argv:
        raise ConfigError(f"{where}: the router container names no command")
    return Pod(
        prefix=f"{name}-{suffix(10)}",
        role="router",
        group="router",
        command="exec " + shlex.join(argv),
        env=kuberay.resolve_env(container, objects, where),
        files=kuberay.volume_files(template, objects, where),
        memory_bytes=kuberay.memory_request(template),
        labels=dict(template.get("metadata", {}).get("labels") or {}),
    )
