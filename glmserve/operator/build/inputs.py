"""Everything the ModelDeployment builders read, resolved by the handler beforehand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from glmserve.common.deployment import ModelDeploymentSpec
from glmserve.common.deployment_plan import PlanStatus
from glmserve.common.nodegroup import NodeGroupSpec
from glmserve.operator.build.meta import Owner

SERVE_PORT = 8000
RAY_METRICS_PORT = 8080
ROUTER_PORT = 50051
ROUTER_METRICS_PORT = 9090
TLS_DIR = "/etc/glmserve/tls"


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
        return f"{self.name}-router"

    @property
    def router_address(self) -> str:
        return f"{self.router_service}.{self.namespace}.svc:{ROUTER_PORT}"

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
