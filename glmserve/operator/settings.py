"""The operator's own configuration, from environment variables the Helm chart sets."""

from __future__ import annotations

import os
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from glmserve.common.deployment import IngressSpec, ModelDeploymentSpec, RouterSpec
from glmserve.common.errors import ConfigError, validation_problems

ENV_PREFIX = "GLMSERVE_OPERATOR_"
MIN_RAY_VERSION = (2, 52, 0)


class OperatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field("ghcr.io/glmserve/glmserve:0.1.0", min_length=1, description="image of Ray and router pods")
    ray_version: str = Field(
        "2.60.0", pattern=r"^\d+\.\d+\.\d+$", description="Ray version inside `image`; at least 2.52.0"
    )
    redis_url: str | None = Field(
        None, pattern=r"^rediss?://", description="shared rate-limit state of the ingress replicas"
    )
    router_replicas: int = Field(2, ge=1, le=32, description="router pods of a deployment that sets none")
    ingress_replicas: int = Field(2, ge=1, le=64, description="ingress replicas of a deployment that sets none")

    @field_validator("ray_version")
    @classmethod
    def _token_auth(cls, version: str) -> str:
        # RayServices run with KubeRay's token authentication, which needs Ray 2.52.
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
