"""Everything the ModelDeployment builders read, resolved by the handler beforehand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from glmserve.common.deployment import ModelDeploymentSpec
from glmserve.common.deployment_plan import PlanStatus
from glmserve.common.nodegroup import NodeGroupSpec
from glmserve.operator.build.meta import Owner, deployment_labels, selector

SERVE_PORT = 8000
RAY_METRICS_PORT = 8080
ROUTER_PORT = 50051
ROUTER_METRICS_PORT = 9090
TLS_DIR = "/etc/glmserve/tls"
SHARD_LABEL = "glmserve.io/router-shard"


@dataclass(frozen=True, slots=True)
class RouterShard:
    """One shard of the router (glmserve/router/shards.py): its Deployment, Service and
    PodDisruptionBudget are called `name` and select its pods alone. An unsharded router keeps the
    names and labels it had before shards existed, so upgrading the operator replaces nothing."""

    deployment: str
    index: int
    count: int

    @property
    def name(self) -> str:
        return f"{self.deployment}-router" if self.count == 1 else f"{self.deployment}-router-{self.index}"

    def selector(self) -> dict[str, str]:
        unsharded = selector(self.deployment, "router")
        return unsharded if self.count == 1 else {**unsharded, SHARD_LABEL: str(self.index)}

    def labels(self) -> dict[str, str]:
        return {**deployment_labels(self.deployment, "router"), **self.selector()}


@dataclass(frozen=True, slots=True)
class DeploymentImages:
    """The images of a deployment's pods, resolved against the operator's defaults."""

    serving: str  # the Ray pods
    router: str  # the router pods
    pull_secrets: tuple[str, ...] = ()

    def pod_spec(self) -> dict[str, Any]:
        """What every pod spec carries: its pull secrets, and a refusal to run as root (both images
        set a numeric non-root USER)."""
        spec: dict[str, Any] = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}}
        if self.pull_secrets:
            spec["imagePullSecrets"] = [{"name": name} for name in self.pull_secrets]
        return spec


@dataclass(frozen=True, slots=True)
class DeploymentInputs:
    name: str
    namespace: str
    owner: Owner
    spec: ModelDeploymentSpec
    groups: dict[str, NodeGroupSpec]  # the NodeGroups its pools use, by name
    plan: PlanStatus
    images: DeploymentImages
    ray_version: str

    @property
    def tls(self) -> bool:
        return self.spec.ingress.tls_secret_name is not None

    @property
    def router_service(self) -> str:
        """The router's ConfigMap and NetworkPolicy (one for every shard), and the one shard's
        Deployment and Service when unsharded."""
        return f"{self.name}-router"

    @property
    def router_shards(self) -> tuple[RouterShard, ...]:
        count = self.spec.router.shards
        return tuple(RouterShard(self.name, index, count) for index in range(count))

    @property
    def router_address(self) -> str:
        """What the ingress and the engines dial: the shards' Services in shard order, separated by
        ";" (replicas.connect and router_replicas parse it)."""
        return ";".join(f"{shard.name}.{self.namespace}.svc:{ROUTER_PORT}" for shard in self.router_shards)

    @property
    def cache_salt_secret(self) -> str:
        return f"{self.name}-cache-salt"

    @property
    def ray_auth_secret(self) -> str:
        return f"{self.name}-ray-auth"

    @property
    def router_auth_secret(self) -> str:
        return f"{self.name}-router-auth"

    @property
    def ingress_service(self) -> str:
        return f"{self.name}-ingress"

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.ingress_service}.{self.namespace}.svc:{SERVE_PORT}/v1"
