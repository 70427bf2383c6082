"""`glmserve up` configuration: one pydantic model for CLI flags and config files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from glmserve.common.autoscaling import DEFAULT_ITL_SLO_S, DEFAULT_TTFT_SLO_S
from glmserve.common.catalogue import TINY_MODEL
from glmserve.common.tenancy import Name

Port = Annotated[int, Field(ge=1, le=65535)]
KvConnector = Literal["NixlConnector", "ExampleConnector"]
# vLLM's VLLM_CPU_OMP_THREADS_BIND syntax: cores for each tensor-parallel rank, "|"-separated.
# Every engine runs with PYTHONHASHSEED=ENGINE_HASH_SEED and sha256_cbor prefix-cache hashes, so a
# router configured with ROUTER_HASHING reproduces the engines' block hashes from token ids.
ENGINE_HASH_SEED = "0"
ROUTER_HASHING = {"algo": "sha256_cbor", "seed": ENGINE_HASH_SEED}
# The router's shared token (glmserve.router.auth): the router checks it on every call, and its
# callers (ingress, engines) send it; in a cluster it comes from the `<deployment>-router-auth` Secret.
ROUTER_TOKEN_ENV = "GLMSERVE_ROUTER_TOKEN"
# Ray Serve LLM's default batching interval. Every batch is a message to the ingress and a write
# to the client whatever its size, so batching cuts the relays' CPU (`benchmarks.cpu_by_process`
# against `glmserve up --stream-interval-ms 0` and 50). A first token is never held back.
STREAM_INTERVAL_MS = 50
# Serve's default (20 s) would cut off the streams of a replica being scaled down: a long answer
# streams for minutes.
DRAIN_TIMEOUT_S = 600.0
_CPU_BIND = r"^(\d+(-\d+)?(,\d+(-\d+)?)*)(\|\d+(-\d+)?(,\d+(-\d+)?)*)*$"


class PoolConfig(BaseModel):
    """One pool of engine replicas (colocated, prefill or decode)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replicas: int = Field(1, ge=0, le=256, description="replicas at start (and the minimum when autoscaling)")
    max_replicas: int | None = Field(None, ge=1, le=256, description="autoscale up to this many replicas")
    target_ongoing_requests: float = Field(8, gt=0, description="autoscaling target per replica")
    initial_replicas: int | None = Field(
        None, ge=0, le=256, description="autoscaling: replicas at start, between replicas and max_replicas"
    )
    downscale_delay_s: float | None = Field(
        None, ge=0, le=86400, description="autoscaling: how long demand must stay low before a replica goes"
    )
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    expert_parallel: bool = Field(False, description="spread the routed experts over the tensor-parallel ranks")
    cpus: str | None = Field(
        None, pattern=_CPU_BIND, description="CPU engines: cores per rank, e.g. '0' or '0-3|4-7' (vLLM's OMP bind)"
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.max_replicas is not None and self.max_replicas < max(self.replicas, 1):
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= replicas ({self.replicas}) and >= 1")
        if self.initial_replicas is not None and not (
            self.replicas <= self.initial_replicas <= (self.max_replicas or self.replicas)
        ):
            raise ValueError(
                f"initial_replicas ({self.initial_replicas}) must lie between replicas ({self.replicas}) "
                f"and max_replicas ({self.max_replicas or self.replicas})"
            )
        if self.cpus is not None and len(self.cpus.split("|")) != self.tensor_parallel_size:
            raise ValueError(
                f"cpus {self.cpus!r} binds {len(self.cpus.split('|'))} ranks but tensor_parallel_size is "
                f"{self.tensor_parallel_size}; give one core list per rank, separated by '|'"
            )
        if self.expert_parallel and self.tensor_parallel_size < 2:
            raise ValueError("expert_parallel needs tensor_parallel_size >= 2 (experts are split over the ranks)")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None and self.max_replicas > self.replicas

    @property
    def start_replicas(self) -> int:
        return self.replicas if self.initial_replicas is None else self.initial_replicas


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
    replicas: int = Field(
        1,
        ge=0,
        le=64,
        description="engine replicas (colocated mode; the minimum when autoscaling; 0: scale from zero)",
    )
    max_replicas: int | None = Field(None, ge=1, le=64, description="colocated mode: autoscale up to this many")
    downscale_delay_s: float | None = Field(
        None,
        ge=0,
        le=86400,
        description="colocated mode, autoscaling: how long demand stays low before a replica goes",
    )
    ttft_slo_s: float = Field(
        DEFAULT_TTFT_SLO_S, gt=0, le=600, description="time to first token the autoscaled pools defend"
    )
    itl_slo_s: float = Field(
        DEFAULT_ITL_SLO_S, gt=0, le=10, description="inter-token latency the autoscaled pools defend"
    )
    autoscaling_policy: Literal["serve", "glmserve"] = Field(
        "serve",
        description="how autoscaled pools scale: Ray Serve's default (ongoing requests vs target_ongoing_requests) or "
        "glmserve's per-pool policy (prefill on prompt tokens and TTFT, decode on sequences, KV use and ITL)",
    )
    disaggregated: bool = Field(False, description="separate prefill and decode pools with KV transfer")
    prefill: PoolConfig = Field(default_factory=PoolConfig, description="the prefill pool (disaggregated mode)")
    decode: PoolConfig = Field(default_factory=PoolConfig, description="the decode pool (disaggregated mode)")
    kv_connector: KvConnector = Field("NixlConnector", description="vLLM KV connector between prefill and decode")
    max_model_len: int | None = Field(None, ge=16, description="context window; default: the model's")
    kv_cache_gib: float = Field(1.0, gt=0, le=1024, description="KV cache per engine replica (CPU) in GiB")
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    max_ongoing_requests: int = Field(64, ge=1, description="requests one engine replica runs at once")
    max_queued_requests: int = Field(64, ge=0, description="requests waiting for an engine before 503")
    stream_interval_ms: int = Field(
        STREAM_INTERVAL_MS,
        ge=0,
        le=1000,
        description="after a stream's first chunk, at most one batch of chunks per interval (0: each chunk at once)",
    )
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After sent with 503 when overloaded")
    queue_ttl_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="the local router: a request waiting longer for an engine slot is refused with 503 (an "
        "autoscaled pool's queued requests wait for a replica's cold start)",
    )
    migration_limit: int = Field(
        3, ge=0, le=16, description="times a request moves to another engine when its own fails (0: never)"
    )
    stall_timeout_s: float = Field(
        60, ge=0, le=3600, description="a streamed request whose engine sends nothing this long moves (0: never)"
    )
    tenants_file: Path | None = Field(None, description="plans and tenants (YAML); default: one open tenant, no keys")
    redis_url: str | None = Field(
        None, pattern=r"^rediss?://", description="limits shared in Redis; default: in memory"
    )
    limits_outage: Literal["fail-open", "fail-closed"] = Field(
        "fail-open", description="when Redis is unreachable: local approximate limits, or 503"
    )
    drain_timeout_s: float = Field(
        DRAIN_TIMEOUT_S,
        gt=0,
        le=86400,
        description="an engine replica Serve removes finishes its requests for up to this long before it is killed",
    )
    seed: int = 0
    router: Literal["auto", "on", "off"] = Field(
        "auto",
        description="run glmserve's router locally; auto: when there is a choice (several engines) or tenants to admit",
    )
    router_address: str | None = Field(None, min_length=1, description="use this router (host:port) instead")
    serve_router: Literal["power-of-two", "prefix-affinity"] = Field(
        "power-of-two",
        description="how Ray Serve spreads requests over the engines when glmserve's router does not run: its "
        "default power-of-two choices, or Ray Serve LLM's PrefixCacheAffinityRouter",
    )
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of the local Ray node")
    ray_address: str | None = Field(None, description="join this Ray cluster instead of starting one")
    max_body_mib: int = Field(
        16, ge=1, le=1024, description="largest request body the API reads, in MiB; larger ones get 413"
    )
    metrics_tenants: tuple[Name, ...] = Field(
        (),
        max_length=100,
        description="tenant ids the ingress's metrics name; the rest count as tenant 'other' (bounds the series)",
    )

    @field_validator("tls_certfile", "tls_keyfile", "tenants_file")
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

    @model_validator(mode="after")
    def _from_zero(self) -> Self:
        """A pool of 0 starts a replica when work arrives for it, which only glmserve's policy sees
        through the local router: requests wait in its queue for a decode (or colocated) replica and
        never reach a Serve handle; while the prefill pool is empty the router has decode engines
        prefill locally, and the prompts it routes wake the prefill pool."""
        pools = [("prefill", self.prefill), ("decode", self.decode)] if self.disaggregated else []
        sizes = [(f"{role}.replicas", p.replicas, p.max_replicas) for role, p in pools]
        for field, replicas, most in sizes or [("replicas", self.replicas, self.max_replicas)]:
            if replicas != 0:
                continue
            if most is None:
                raise ValueError(
                    f"{field} 0 (scale from zero) needs a maximum: set {field.replace('replicas', 'max_replicas')}"
                )
            if self.autoscaling_policy != "glmserve" or not self.runs_local_router:
                raise ValueError(
                    f"{field} 0 (scale from zero) needs autoscaling_policy glmserve and the local router (router on, "
                    "no router_address): the work that wakes the pool is seen there"
                )
        return self

    @model_validator(mode="after")
    def _max_replicas(self) -> Self:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= replicas ({self.replicas})")
        return self

    @model_validator(mode="after")
    def _serve_router(self) -> Self:
        if self.serve_router != "power-of-two" and (self.runs_local_router or self.router_address is not None):
            raise ValueError("serve_router applies only where glmserve's router does not run: set router: off")
        return self

    @property
    def engine_replicas(self) -> int:
        return self.prefill.replicas + self.decode.replicas if self.disaggregated else self.replicas

    @property
    def scales_from_zero(self) -> bool:
        """The pool that runs requests to their end (decode, or colocated) may have no replica."""
        return (self.decode.replicas if self.disaggregated else self.replicas) == 0

    @property
    def runs_local_router(self) -> bool:
        """auto: when there is a choice of engines, or tenants to admit (the router runs admission)."""
        if self.router_address is not None or self.router == "off":
            return False
        return self.router == "on" or self.engine_replicas > 1 or self.tenants_file is not None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_certfile else "http"

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{self.scheme}://{host}:{self.port}/v1"
