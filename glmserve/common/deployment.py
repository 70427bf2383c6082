"""The `ModelDeployment` custom resource's spec: a model served by prefill and decode pools.

The operator renders it into a RayService and passes it, as its camelCase wire form, to the
serving side's app builder, which validates it with this same model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from glmserve.common.autoscaling import (
    DEFAULT_DOWNSCALE_DELAY_S,
    DEFAULT_ITL_SLO_S,
    DEFAULT_KV_CACHE_USAGE,
    DEFAULT_LEAD_S,
    DEFAULT_TTFT_SLO_S,
)
from glmserve.common.capacity import DEFAULT_CONCURRENCY, Layout
from glmserve.common.catalogue import CATALOGUE, ModelSpec, Precision, UnknownModelError, get_model
from glmserve.common.observability import ObservabilitySpec, SecretKeySelector, SecretName
from glmserve.common.resource import ResourceName, Spec, cel, validations
from glmserve.common.roles import WorkerRole

# What the serving image loads: a Hugging Face repo, an object-store mirror (Ray Serve LLM
# downloads it) or a directory on a PersistentVolumeClaim (`pvc://CLAIM/DIR`, mounted read-only).
SOURCE = r"^(hf|s3|gs)://.+$|^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.+$"
MODELS_DIR = "/mnt/models"
# The name prefixes Service names (DNS-1035 labels of at most 63 characters, e.g. `<name>-ingress`).
DEPLOYMENT_NAME = r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$"
MSG_DEPLOYMENT_NAME = "metadata.name must start with a letter and have at most 40 lowercase letters, digits or '-'"

MSG_EXPERT = "expert must be 1 (experts tensor-sharded) or tensor x data (expert parallelism over every rank)"
MSG_REPLICAS_XOR = "set replicas or autoscaling, not both"
MSG_AUTOSCALING = "minReplicas must not exceed maxReplicas"
MSG_BAND = "scaleDownAt must be below scaleUpAt (the band between them keeps a steady load from flapping)"
MSG_PLANS_UNIQUE = "plans must not repeat"
MSG_SHARDS = (
    "router.shards must not exceed the replicas (autoscaling.maxReplicas) of prefill or decode: a shard"
    " owning no engine of a pool cannot serve its tenants"
)


def _max_replicas_cel(pool: str) -> str:
    return (
        f"(has(self.{pool}.autoscaling) ? self.{pool}.autoscaling.maxReplicas"
        f" : has(self.{pool}.replicas) ? self.{pool}.replicas : 1)"
    )


SHARDS_CEL = "!has(self.router) || !has(self.router.shards) || " + " && ".join(
    f"self.router.shards <= {_max_replicas_cel(pool)}" for pool in ("prefill", "decode")
)
# Catalogue entries without published weights (glm-4.6-tiny): the checkpoint is made with
# `glmserve model create-tiny DIR`, so a deployment must say where it put it.
LOCAL_ONLY = sorted(name for name, entry in CATALOGUE.items() if entry.source.startswith("builtin://"))
MSG_LOCAL_SOURCE = (
    f"{', '.join(LOCAL_ONLY)} has no published weights: set model.source to the directory where"
    " `glmserve model create-tiny` wrote it, e.g. pvc://CLAIM/DIR"
)


class ModelRef(Spec):
    """Which weights to serve and at what context."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(f"has(self.source) || !({' || '.join(f'self.name == {n!r}' for n in LOCAL_ONLY)})", MSG_LOCAL_SOURCE)
        )
    )

    name: str = Field(
        description="catalogue name (`glmserve model list`)",
        json_schema_extra={"enum": list[JsonValue](sorted(CATALOGUE))},
    )
    precision: Precision | None = Field(
        None, description="weight precision, fp8 or bf16; default: the catalogue entry's (picks its sibling entry)"
    )
    source: str | None = Field(
        None,
        pattern=SOURCE,
        max_length=1024,
        description="weights: hf://REPO, s3://..., gs://... or pvc://CLAIM/DIR (a directory on a PVC of the namespace)",
    )
    max_context: int | None = Field(
        None, ge=256, description="longest sequence (prompt + output) in tokens; default: the model's maximum"
    )
    served_name: str | None = Field(
        None, min_length=1, max_length=128, description="the name clients send as `model`; default: `name`"
    )
    kv_cache_precision: Precision = Field("bf16", description="KV cache precision: bf16 (vLLM's default) or fp8")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        try:
            get_model(name)
        except UnknownModelError as exc:  # a KeyError, which pydantic would not report
            raise ValueError(str(exc)) from None
        return name

    @model_validator(mode="after")
    def _resolvable(self) -> Self:
        limit = self.catalogue_entry().arch.max_position_embeddings
        if self.max_context is not None and self.max_context > limit:
            raise ValueError(f"maxContext {self.max_context} exceeds {self.name}'s {limit} tokens")
        if self.source is None and self.name in LOCAL_ONLY:
            raise ValueError(MSG_LOCAL_SOURCE)
        return self

    def catalogue_entry(self) -> ModelSpec:
        """The catalogue entry of `name` in `precision` (glm-4.6 + fp8 is glm-4.6-fp8)."""
        entry = get_model(self.name)
        if self.precision is None or self.precision == entry.precision:
            return entry
        for sibling in CATALOGUE.values():
            if sibling.arch == entry.arch and sibling.precision == self.precision:
                return sibling
        raise ValueError(f"{self.name} has no {self.precision} weights in the catalogue; use {entry.precision}")

    def resolve(self) -> ModelSpec:
        entry = self.catalogue_entry()
        spec = replace(entry, source=self.source or entry.source)
        return spec.with_context(self.max_context) if self.max_context else spec


def weights_claim(source: str | None) -> str | None:
    """The PersistentVolumeClaim a `pvc://CLAIM/DIR` source names (mounted at MODELS_DIR/CLAIM)."""
    if source is None or not source.startswith("pvc://"):
        return None
    return source.removeprefix("pvc://").split("/", 1)[0]


class Parallelism(Spec):
    """How one replica spreads over GPUs; leave it out to let the capacity planner choose."""

    model_config = ConfigDict(
        json_schema_extra=validations(cel("self.expert == 1 || self.expert == self.tensor * self.data", MSG_EXPERT))
    )

    tensor: int = Field(ge=1, le=64, description="tensor-parallel size: GPUs of one node sharing each layer")
    data: int = Field(1, ge=1, le=64, description="data-parallel attention ranks (one per node when > 1)")
    expert: int = Field(1, ge=1, le=4096, description="expert-parallel size: 1 or tensor x data")

    @model_validator(mode="after")
    def _expert(self) -> Self:
        if self.expert not in (1, self.tensor * self.data):
            raise ValueError(MSG_EXPERT)
        return self

    def layout(self) -> Layout:
        return Layout(self.tensor, self.data, self.expert)


class Autoscaling(Spec):
    """Replica bounds and the targets each pool scales on (glmserve.common.autoscaling): Ray Serve
    scales between the bounds with glmserve's policy, KubeRay adds and removes worker pods.
    Unset targets come from the capacity plan and the SLOs (docs/autoscaling.md)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self.minReplicas <= self.maxReplicas", MSG_AUTOSCALING),
            cel("!has(self.scaleDownAt) || !has(self.scaleUpAt) || self.scaleDownAt < self.scaleUpAt", MSG_BAND),
        )
    )

    min_replicas: int = Field(
        1, ge=0, le=64, description="replicas kept when idle; 0: scale to zero (requests wait in the router's queue)"
    )
    max_replicas: int = Field(ge=1, le=64, description="most replicas; the planner reserves nodes for this many")
    ttft_slo_seconds: float = Field(DEFAULT_TTFT_SLO_S, ge=0.01, le=600, description="time to first token to defend")
    itl_slo_seconds: float = Field(DEFAULT_ITL_SLO_S, ge=0.001, le=10, description="inter-token latency to defend")
    running_per_replica: int | None = Field(
        None, ge=1, le=4096, description="decode: sequences one replica should run; default: maxConcurrency"
    )
    kv_cache_usage: float = Field(
        DEFAULT_KV_CACHE_USAGE, ge=0.01, le=1, description="decode: KV-cache share one replica should fill at most"
    )
    prefill_tokens_per_second: float | None = Field(
        None,
        ge=1,
        description="prefill: prompt tokens one replica prefills per second; default: the planner's estimate from"
        " the GPUs' compute (none on CPU node groups: prefill then scales on its engines' sequences)",
    )
    scale_up_at: float = Field(1.0, ge=0.05, le=4, description="add replicas when demand exceeds this share of them")
    scale_down_at: float = Field(
        0.6, ge=0.05, le=4, description="remove replicas when demand stays below this share of them (< scaleUpAt)"
    )
    upscale_delay_seconds: float = Field(10, ge=0, le=3600, description="demand must stay high this long to add")
    downscale_delay_seconds: float = Field(
        DEFAULT_DOWNSCALE_DELAY_S, ge=0, le=86400, description="demand must stay low this long to remove"
    )
    lead_seconds: float = Field(
        DEFAULT_LEAD_S,
        ge=0,
        le=3600,
        description="how far ahead a rising demand is met: a replica's cold start (loading its weights); 0: none",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(MSG_AUTOSCALING)
        if self.scale_down_at >= self.scale_up_at:
            raise ValueError(MSG_BAND)
        return self


class Pool(Spec):
    """Identical replicas of one role (prefill or decode) pinned to one node group."""

    model_config = ConfigDict(
        json_schema_extra=validations(cel("!(has(self.replicas) && has(self.autoscaling))", MSG_REPLICAS_XOR))
    )

    node_group: ResourceName = Field(description="name of the NodeGroup whose nodes run this pool")
    replicas: int | None = Field(None, ge=1, le=64, description="fixed replica count (default 1)")
    autoscaling: Autoscaling | None = Field(None, description="replica bounds instead of a fixed count")
    max_concurrency: int = Field(
        DEFAULT_CONCURRENCY,
        ge=1,
        le=4096,
        description="sequences one replica holds at maxContext at once; sizes its KV cache (Zhipu's table: 8)",
    )
    parallelism: Parallelism | None = Field(None, description="replica layout; default: the planner's smallest")

    @model_validator(mode="after")
    def _one_count(self) -> Self:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError(MSG_REPLICAS_XOR)
        return self

    @property
    def min_replicas(self) -> int:
        return self.autoscaling.min_replicas if self.autoscaling else self.replicas or 1

    @property
    def max_replicas(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling else self.replicas or 1


class KvTransfer(Spec):
    """How prefill replicas hand their KV cache to decode replicas."""

    connector: Literal["NixlConnector", "LMCacheConnectorV1", "P2pNcclConnector"] = Field(
        "NixlConnector", description="vLLM KV connector: NixlConnector (RDMA/NVLink), LMCacheConnectorV1 or P2pNccl"
    )


class Mtp(Spec):
    """Speculative decoding with GLM-4.6's multi-token-prediction layer."""

    enabled: bool = Field(True, description="draft tokens with the MTP layer (Zhipu's table assumes it)")
    num_speculative_tokens: int = Field(1, ge=1, le=4, description="tokens drafted per step")


class RouterSpec(Spec):
    """The KV-aware gRPC router in front of the pools."""

    replicas: int = Field(2, ge=1, le=32, description="router pods (of each shard)")
    shards: int = Field(
        1,
        ge=1,
        le=16,
        description="router shards, each a Deployment of `replicas` pods indexing and routing to its part of the"
        " engines for its part of the tenants (docs/router-sizing.md); at most each pool's replicas",
    )

    @model_serializer(mode="wrap")
    def _unsharded_as_before(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """An unsharded router leaves `shards` out (its default), so the Serve application's args of
        a deployment from before shards existed stay the same and an operator upgrade redeploys nothing."""
        data: dict[str, Any] = handler(self)
        if self.shards == 1:
            data.pop("shards", None)
        return data


class IngressSpec(Spec):
    """The OpenAI-compatible HTTP ingress (a Ray Serve deployment)."""

    replicas: int = Field(2, ge=1, le=64, description="ingress replicas in the Serve application")
    max_body_mib: int = Field(
        16, ge=1, le=1024, description="largest request body the API reads, in MiB; larger ones get 413"
    )
    tls_secret_name: SecretName | None = Field(
        None, description="kubernetes.io/tls Secret for HTTPS; default: plain HTTP"
    )
    migration_limit: int = Field(
        3, ge=0, le=16, description="times a request moves to another engine replica when its own fails (0: never)"
    )
    stall_timeout_seconds: float = Field(
        60, ge=0, le=3600, description="a streamed request whose engine sends nothing this long moves (0: never)"
    )


# An image reference: [registry[:port]/]path[:tag][@digest].
IMAGE = r"^[a-z0-9]([-a-z0-9._:/]*[a-z0-9])?(:[\w][\w.-]{0,127})?(@sha256:[0-9a-f]{64})?$"
Image = Annotated[str, Field(pattern=IMAGE, max_length=512)]


class Images(Spec):
    """Where the deployment's pods pull from; each unset image is the operator's default."""

    serving: Image | None = Field(None, description="image of the Ray pods (vLLM engines, Ray Serve LLM, NIXL)")
    router: Image | None = Field(None, description="image of the router pods (the slim operator/router image)")
    pull_secrets: list[SecretName] = Field(
        default_factory=list,
        max_length=16,
        description="imagePullSecrets of every pod, added to the operator's",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


# What KubeRay passes to Ray as RAY_REDIS_ADDRESS: host:port, or rediss://host:port for TLS.
REDIS_ADDRESS = r"^(rediss?://)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?:[0-9]{1,5}$"


class GcsFaultTolerance(Spec):
    """Ray's cluster state (the GCS) kept in an external Redis (KubeRay's gcsFaultToleranceOptions):
    a restarted head takes the running workers and Serve replicas back instead of a new cluster."""

    redis_address: str = Field(
        pattern=REDIS_ADDRESS,
        max_length=512,
        description="host:port of the Redis (rediss://host:port for TLS); deployments may share one: each keeps"
        " its state under its RayCluster's UID",
    )
    password_secret: SecretKeySelector | None = Field(
        None, description="the Secret key holding its password; none: no AUTH"
    )


PlanName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", max_length=63)]


class ModelDeploymentSpec(Spec):
    """GLM-4.6 served by disaggregated prefill and decode pools behind a router and an ingress."""

    model_config = ConfigDict(json_schema_extra=validations(cel(SHARDS_CEL, MSG_SHARDS)))

    model: ModelRef = Field(description="the model to serve")
    prefill: Pool = Field(description="the pool that computes prompts' KV cache")
    decode: Pool = Field(description="the pool that generates tokens")
    kv_transfer: KvTransfer = Field(default_factory=KvTransfer, description="prefill-to-decode KV transfer")
    mtp: Mtp = Field(default_factory=Mtp, description="MTP speculative decoding")
    router: RouterSpec = Field(default_factory=RouterSpec, description="the router")
    ingress: IngressSpec = Field(default_factory=IngressSpec, description="the OpenAI ingress")
    plans: list[PlanName] = Field(
        default_factory=list,
        max_length=64,
        description="names of the Plans whose tenants may use this deployment; empty: every Plan in the namespace",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    images: Images = Field(default_factory=Images, description="container images and their pull secrets")
    observability: ObservabilitySpec = Field(
        default_factory=ObservabilitySpec, description="traces of every pod (metrics need no settings)"
    )
    gcs_fault_tolerance: GcsFaultTolerance | None = Field(
        None, description="keep the Ray head's state in a Redis; default: a lost head takes its cluster with it"
    )

    @field_validator("plans")
    @classmethod
    def _unique(cls, plans: list[str]) -> list[str]:
        if len(set(plans)) != len(plans):
            raise ValueError(MSG_PLANS_UNIQUE)
        return plans

    @model_validator(mode="after")
    def _shards_have_engines(self) -> Self:
        """Each shard routes only to the engines it owns, so more shards than a pool's replicas
        leaves some shard's tenants without an engine of that pool."""
        if any(self.router.shards > pool.max_replicas for pool in self.pools().values()):
            raise ValueError(MSG_SHARDS)
        return self

    def pools(self) -> dict[WorkerRole, Pool]:
        return {"prefill": self.prefill, "decode": self.decode}
