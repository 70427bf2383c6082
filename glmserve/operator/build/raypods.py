"""Pod templates of the Ray head, the CPU ingress group and the pools' worker groups (GPU or CPU nodes)."""

from __future__ import annotations

from typing import Any

from glmserve.common.config import DRAIN_TIMEOUT_S, ENGINE_HASH_SEED
from glmserve.common.deployment import MODELS_DIR, weights_claim
from glmserve.common.deployment_plan import PoolLayoutStatus
from glmserve.common.gpus import get_gpu
from glmserve.common.nodegroup import CpuNodes
from glmserve.operator.build.inputs import RAY_METRICS_PORT, SERVE_PORT, TLS_DIR, DeploymentInputs
from glmserve.operator.build.meta import deployment_labels
from glmserve.operator.build.random_secrets import SALT_KEY, router_token_env
from glmserve.operator.build.router import TENANTS_FILE
from glmserve.operator.build.tracing import tracing_env, tracing_volumes

# NCCL and vLLM's workers exchange tensors through /dev/shm; a container's default 64 MiB stalls them.
SHM_SIZE = "32Gi"
# A CPU engine's /dev/shm holds only vLLM's small inter-process queues (KV moves over NIXL).
CPU_SHM_SIZE = "512Mi"
# Floors that keep the pods out of the BestEffort class; GPU nodes have many times this.
HEAD_RESOURCES = {"cpu": "4", "memory": "16Gi"}
INGRESS_RESOURCES = {"cpu": "4", "memory": "8Gi"}
GPU_WORKER_FLOOR = {"cpu": "16", "memory": "128Gi"}
# A deployment with every pool on CPU node groups is a development one (the tiny model, a smoke
# test): its head and ingress fit beside the engines on a laptop-sized machine.
DEV_HEAD_RESOURCES = {"cpu": "1", "memory": "2Gi"}
DEV_INGRESS_RESOURCES = {"cpu": "1", "memory": "2Gi"}
HEAD_PORTS = {"gcs": 6379, "dashboard": 8265, "client": 10001}
# A node whose link is cut sends no reset: its engines' streams stall until the GCS (on the head)
# declares the node dead. Ray's defaults (a check every 3 s, 10 s timeout, 5 misses) take 30-65 s;
# three missed 1 s checks take at most 6 s, so streams on such a node end within 10 s and
# Serve replaces its replicas (docs/node-loss.md has the measurement).
GCS_HEALTH_CHECK_ENV = (
    {"name": "RAY_health_check_period_ms", "value": "1000"},
    {"name": "RAY_health_check_timeout_ms", "value": "1000"},
    {"name": "RAY_health_check_failure_threshold", "value": "3"},
)
TENANTS_DIR = "/etc/glmserve/tenants"
# The TLS Secret's files belong to root and the pod's fsGroup: readable by the serving image's user
# (images/serving/Dockerfile: USER 1000) through that group, and by nobody else in the container.
TLS_FILE_MODE = 0o440
SERVING_UID = 1000
# A deleted Ray pod drains its node first (glmserve.serving.node_drain): Serve moves its replicas
# away and each finishes its requests within its graceful_shutdown_timeout_s (the engines' and the
# ingress's drain timeout). The hook's deadline leaves Serve's own steps before that drain (starting
# the stop: at the latest deadline - drain timeout) and Ray's stop after SIGTERM inside the grace period.
DRAIN_STEPS_S = 30
RAY_STOP_S = 30
PRESTOP_DEADLINE_S = int(DRAIN_TIMEOUT_S) + DRAIN_STEPS_S
TERMINATION_GRACE_S = PRESTOP_DEADLINE_S + RAY_STOP_S
DRAIN_COMMAND = ["python", "-m", "glmserve.serving.node_drain", "--deadline-s", str(PRESTOP_DEADLINE_S)]


def _pod_template(
    inputs: DeploymentInputs,
    component: str,
    requests: dict[str, str],
    *,
    limits: dict[str, str] | None = None,
    shm: str | None = None,
    pod: dict[str, Any] | None = None,
    env: tuple[dict[str, Any], ...] = (),
    volume: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One Ray container (`limits`: also requested; `shm`: the size of a RAM-backed /dev/shm for
    engines; `volume`: one more (volume, mount)). Pods that run Serve replicas mount a pvc://
    model's claim: engines load the weights, the ingress the tokenizer."""
    ports = HEAD_PORTS if component == "head" else {}
    container: dict[str, Any] = {
        "name": "ray-head" if component == "head" else "ray-worker",
        "image": inputs.images.serving,
        "env": [
            {"name": "GLMSERVE_MODEL_DEPLOYMENT", "value": inputs.name},
            {"name": "GLMSERVE_ROUTER_ADDRESS", "value": inputs.router_address},
            # Engines hash prompt blocks with this seed; the router's config names the same one.
            {"name": "PYTHONHASHSEED", "value": ENGINE_HASH_SEED},
            *env,
            *tracing_env(inputs.spec.observability.tracing),
        ],
        "ports": [
            {"name": name, "containerPort": port}
            for name, port in {**ports, "serve": SERVE_PORT, "metrics": RAY_METRICS_PORT}.items()
        ],
        "resources": {"requests": {**requests, **(limits or {})}, **({"limits": limits} if limits else {})},
        "lifecycle": {"preStop": {"exec": {"command": DRAIN_COMMAND}}},
    }
    mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    security = inputs.images.pod_spec()["securityContext"]
    if inputs.tls:
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        secret = {"secretName": inputs.spec.ingress.tls_secret_name, "defaultMode": TLS_FILE_MODE}
        volumes.append({"name": "tls", "secret": secret})
        security = {**security, "fsGroup": SERVING_UID, "fsGroupChangePolicy": "OnRootMismatch"}
    for extra_volume, mount in [*([volume] if volume else []), *tracing_volumes(inputs.spec.observability.tracing)]:
        volumes.append(extra_volume)
        mounts.append(mount)
    claim = weights_claim(inputs.spec.model.source)
    if claim and component != "head":
        volumes.append({"name": "weights", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "weights", "mountPath": f"{MODELS_DIR}/{claim}", "readOnly": True})
    if shm:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
    if mounts:
        container["volumeMounts"] = mounts
    spec: dict[str, Any] = {
        **inputs.images.pod_spec(),
        "securityContext": security,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "containers": [container],
        **(pod or {}),
    }
    if volumes:
        spec["volumes"] = volumes
    return {"metadata": {"labels": deployment_labels(inputs.name, component)}, "spec": spec}


def development(inputs: DeploymentInputs) -> bool:
    """Every pool on CPU node groups."""
    return all(inputs.groups[layout.node_group].cpu for layout in inputs.plan.pools().values())


def head_template(inputs: DeploymentInputs) -> dict[str, Any]:
    requests = DEV_HEAD_RESOURCES if development(inputs) else HEAD_RESOURCES
    return _pod_template(inputs, "head", requests, env=GCS_HEALTH_CHECK_ENV)


def ingress_template(inputs: DeploymentInputs, redis_url: str | None) -> dict[str, Any]:
    """The ingress replicas read the tenants from the router's ConfigMap (optional: absent until a
    Plan applies, and then nobody is admitted), salt prefix caches with the deployment's one secret
    (random_secrets.py), call the router with its token, and share rate-limit state through `redis_url`."""
    salt = {"name": inputs.cache_salt_secret, "key": SALT_KEY}
    env: tuple[dict[str, Any], ...] = (
        {"name": "GLMSERVE_TENANTS_FILE", "value": f"{TENANTS_DIR}/{TENANTS_FILE}"},
        {"name": "GLMSERVE_CACHE_SALT_SECRET", "valueFrom": {"secretKeyRef": salt}},
        router_token_env(inputs),
    )
    if redis_url:
        env += ({"name": "GLMSERVE_REDIS_URL", "value": redis_url},)
    items = [{"key": TENANTS_FILE, "path": TENANTS_FILE}]
    volume = {"name": "tenants", "configMap": {"name": inputs.router_service, "items": items, "optional": True}}
    mount = {"name": "tenants", "mountPath": TENANTS_DIR, "readOnly": True}
    requests = DEV_INGRESS_RESOURCES if development(inputs) else INGRESS_RESOURCES
    return _pod_template(inputs, "ingress", requests, env=env, volume=(volume, mount))


def cpu_pod_resources(cpu: CpuNodes) -> dict[str, str]:
    """What a CPU node group's worker pod requests, and its limits: the node group's size."""
    return {"cpu": str(cpu.cores), "memory": f"{cpu.memory_gib:g}Gi"}


def worker_template(inputs: DeploymentInputs, role: str, layout: PoolLayoutStatus) -> dict[str, Any]:
    """One pod per node of the pool's group: all its GPUs, or all of a CPU group's cores and memory;
    its engines register with the router with the router's token."""
    group = inputs.groups[layout.node_group]
    tolerations = [
        {"key": t.key, "operator": "Equal" if t.value else "Exists", "effect": t.effect}
        | ({"value": t.value} if t.value else {})
        for t in group.taints
    ]
    pod: dict[str, Any] = {"nodeSelector": group.node_selector(layout.node_group)}
    env = (router_token_env(inputs),)
    if tolerations:
        pod["tolerations"] = tolerations
    if group.cpu:
        size = cpu_pod_resources(group.cpu)
        return _pod_template(inputs, role, size, limits=size, shm=CPU_SHM_SIZE, pod=pod, env=env)
    gpus = {get_gpu(group.device).resource: str(layout.gpus_per_node)}
    return _pod_template(inputs, role, GPU_WORKER_FLOOR, limits=gpus, shm=SHM_SIZE, pod=pod, env=env)
