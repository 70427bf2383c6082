"""The operator's own configuration, from environment variables the Helm chart sets."""

from __future__ import annotations

import os
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from glmserve import __version__
from glmserve.common.deployment import Image, Images, IngressSpec, ModelDeploymentSpec, RouterSpec, SecretName
from glmserve.common.errors import ConfigError, validation_problems
from glmserve.operator.build.inputs import DeploymentImages

ENV_PREFIX = "GLMSERVE_OPERATOR_"
# images/serving and images/operator are published as REGISTRY/serving and REGISTRY/operator.
DEFAULT_REGISTRY = "ghcr.io/glmserve"
# RayServices run with KubeRay's token authentication, which needs Ray 2.52.
MIN_RAY_VERSION = (2, 52, 0)


def default_image(registry: str, name: str) -> str:
    """The image of this release: its tag is the package version."""
    return f"{registry}/{name}:{__version__}"


class OperatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    registry: str = Field(
        DEFAULT_REGISTRY, pattern=r"^[a-z0-9]([-a-z0-9._:/]*[a-z0-9])?$", description="where the default images are"
    )
    serving_image: Image | None = Field(None, description="image of the Ray pods; default: REGISTRY/serving:VERSION")
    router_image: Image | None = Field(None, description="image of the router pods; default: REGISTRY/operator:VERSION")
    image_pull_secrets: tuple[SecretName, ...] = Field(
        (), max_length=16, description="comma-separated imagePullSecrets of every pod the operator renders"
    )
    ray_version: str = Field(
        "2.60.0", pattern=r"^\d+\.\d+\.\d+$", description="Ray version inside the serving image; at least 2.52.0"
    )
    redis_url: str | None = Field(
        None, pattern=r"^rediss?://", description="shared rate-limit state of the routers and ingress replicas"
    )
    router_replicas: int = Field(2, ge=1, le=32, description="router pods of a deployment that sets none")
    ingress_replicas: int = Field(2, ge=1, le=64, description="ingress replicas of a deployment that sets none")

    @field_validator("image_pull_secrets", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return tuple(name.strip() for name in value.split(",") if name.strip()) if isinstance(value, str) else value

    def images(self, spec: Images) -> DeploymentImages:
        """`spec`'s images, with this operator's defaults where it sets none."""
        return DeploymentImages(
            serving=spec.serving or self.serving_image or default_image(self.registry, "serving"),
            router=spec.router or self.router_image or default_image(self.registry, "operator"),
            pull_secrets=tuple(dict.fromkeys((*self.image_pull_secrets, *spec.pull_secrets))),
        )

    @field_validator("ray_version")
    @classmethod
    def _token_auth(cls, version: str) -> str:
        if tuple(int(part) for part in version.split(".")) < MIN_RAY_VERSION:
            raise ValueError(f"must be at least {'.'.join(map(str, MIN_RAY_VERSION))} (Ray token authentication)")
        return version

    def complete(self, spec: ModelDeploymentSpec) -> ModelDeploymentSpec:
        """`spec` with the cluster's defaults where it leaves router or ingress replicas unset."""
        update: dict[str, RouterSpec | IngressSpec] = {}
        if "replicas" not in spec.router.model_fields_set:
            update["router"] = spec.router.model_copy(update={"replicas": self.router_replicas})
        if "replicas" not in spec.ingress.model_fields_set:
            update["ingress"] = spec.ingress.model_copy(update={"replicas": self.ingress_replicas})
        return spec.model_copy(update=update)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Self:
        env = dict(os.environ if env is None else env)
        unknown = sorted(
            k for k in env if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX) :].lower() not in cls.model_fields
        )
        if unknown:
            known = ", ".join(ENV_PREFIX + name.upper() for name in cls.model_fields)
            raise ConfigError(f"unknown operator settings {', '.join(unknown)}; known: {known}")
        values = {name: env[ENV_PREFIX + name.upper()] for name in cls.model_fields if ENV_PREFIX + name.upper() in env}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = validation_problems(exc, where=lambda loc: f"{ENV_PREFIX}{str(loc[0]).upper()}")
            raise ConfigError(f"invalid operator settings: {problems}") from None
