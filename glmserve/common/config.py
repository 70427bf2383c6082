"""`glmserve up` configuration: one pydantic model for CLI flags and config files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from glmserve.common.catalogue import TINY_MODEL

Port = Annotated[int, Field(ge=1, le=65535)]


class ServeConfig(BaseModel):
    """How to run the local stack. Every field has a safe default for a laptop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        TINY_MODEL,
        description=f"catalogue name ({TINY_MODEL} is built locally) or path to a Glm4MoeForCausalLM checkpoint",
    )
    served_model_name: str | None = Field(None, description="name clients use; default: the catalogue name")
    host: str = "127.0.0.1"
    port: Port = 8000
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    replicas: int = Field(1, ge=1, le=64, description="engine replicas")
    max_model_len: int | None = Field(None, ge=16, description="context window; default: the model's")
    kv_cache_gib: float = Field(1.0, gt=0, le=1024, description="KV cache per engine replica (CPU) in GiB")
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    max_ongoing_requests: int = Field(64, ge=1, description="requests one engine replica runs at once")
    max_queued_requests: int = Field(64, ge=0, description="requests waiting for an engine before 503")
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After sent with 503 when overloaded")
    seed: int = 0
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of the local Ray node")
    ray_address: str | None = Field(None, description="join this Ray cluster instead of starting one")

    @field_validator("tls_certfile", "tls_keyfile")
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{path} is not a readable file")
        return path

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("HTTPS needs both tls_certfile and tls_keyfile (or neither for HTTP)")
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.tls_certfile else "http"

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{self.scheme}://{host}:{self.port}/v1"
