"""The RayService's Serve application: `import_path: glmserve.serving.entrypoint:app_builder`.

The operator renders `args` as `ServeAppArgs` (the ModelDeployment spec and the capacity plan
it chose); this describes the prefill and decode pools on their node groups' GPUs behind the
OpenAI ingress, with the engine arguments and placement the plan implies (vLLM's CPU backend on
CPU node groups), for the topology builder that `glmserve up` uses too.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig
from ray.serve.llm.deployment import LLMServer

from glmserve.common.config import STREAM_INTERVAL_MS
from glmserve.common.deployment import MODELS_DIR, ModelDeploymentSpec
from glmserve.common.deployment_plan import PlanStatus, PoolLayoutStatus, ServeAppArgs, pool_targets
from glmserve.common.errors import ConfigError
from glmserve.common.placement import pool_placement, pool_resource
from glmserve.common.roles import WorkerRole
from glmserve.serving.engine.gpu_args import QUEUE_PER_SEQUENCE, gpu_engine_kwargs
from glmserve.serving.engine.server import DataParallelEngineServer, EngineServer
from glmserve.serving.ingress.limits import MIB, RequestLimits
from glmserve.serving.ingress.settings import MigrationSettings
from glmserve.serving.topology import CPU, PoolSpec, TopologySpec, application, llm_config, plan


def model_source(source: str) -> str:
    """What Ray Serve LLM loads: a Hugging Face repo id, an s3:// / gs:// mirror, or the directory
    where the operator mounts a pvc:// source."""
    scheme, _, rest = source.partition("://")
    if scheme == "hf":
        return rest
    if scheme in ("s3", "gs"):
        return source
    if scheme == "pvc":
        return f"{MODELS_DIR}/{rest}"
    raise ConfigError(f"model source {source!r} is not supported; use hf://, s3://, gs:// or pvc://")


def engine_class(layout: PoolLayoutStatus) -> type[LLMServer]:
    """A replica wider than one data-parallel rank is a gang of Serve replicas, one per rank."""
    return DataParallelEngineServer if layout.parallelism.data > 1 else EngineServer


def pool_spec(spec: ModelDeploymentSpec, role: WorkerRole, layout: PoolLayoutStatus) -> PoolSpec:
    pool = spec.pools()[role]
    cores = layout.cpu.cores if layout.cpu else None
    return PoolSpec(
        role=role,
        replicas=pool.min_replicas,
        max_replicas=pool.max_replicas,
        max_running=pool.max_concurrency,
        max_waiting=QUEUE_PER_SEQUENCE * pool.max_concurrency,
        engine_kwargs=gpu_engine_kwargs(spec, role, layout),
        accelerator=CPU if layout.cpu else layout.gpu,
        placement=pool_placement(role, layout.node_group, layout.parallelism.layout(), cores).group,
        engine_cls=engine_class(layout),
        # A data-parallel replica is a gang of Serve replicas, one per rank, which Serve scales
        # as a whole: its count is not the pool's, so the gang keeps Serve's default policy.
        scaling=pool_targets(spec, role, layout) if layout.parallelism.data == 1 else None,
    )


def pool_llm_config(
    spec: ModelDeploymentSpec, role: WorkerRole, layout: PoolLayoutStatus, *, routed: bool = False
) -> LLMConfig:
    name = spec.model.served_name or spec.model.name
    source = model_source(spec.model.resolve().source)
    return llm_config(name, source, pool_spec(spec, role, layout), STREAM_INTERVAL_MS, routed=routed)


def topology_spec(spec: ModelDeploymentSpec, planner: PlanStatus, router: str | None) -> TopologySpec:
    model = spec.model.resolve()
    return TopologySpec(
        model=spec.model.served_name or spec.model.name,
        source=model_source(model.source),
        max_context=model.max_context,
        thinking_default=model.thinking_default,
        created=int(time.time()),
        pools=tuple(pool_spec(spec, role, layout) for role, layout in planner.pools().items()),
        stream_interval_ms=STREAM_INTERVAL_MS,
        router=router,
        ingress_replicas=spec.ingress.replicas,
        # One replica per ingress pod, placed by the resource the ingress group advertises: a
        # replica elsewhere (the head) leaves the ingress pods without a Serve proxy, so the
        # ingress Service has no ready endpoint.
        ingress_actor_options={"num_cpus": 0, "resources": {pool_resource("ingress"): 1}},
        limits=None,  # each ingress replica reads them from its own pod's environment
        migration=MigrationSettings(spec.ingress.migration_limit, spec.ingress.stall_timeout_seconds),
        request_limits=RequestLimits(max_body_bytes=spec.ingress.max_body_mib * MIB),
    )


def app_builder(args: dict[str, Any]) -> Application:
    app_args = ServeAppArgs.model_validate(args)
    # The operator's router (a headless Service): engines register with each of its pods and
    # publish their KV events; the ingress asks it where each request goes.
    router = os.environ.get("GLMSERVE_ROUTER_ADDRESS") or None
    return application(plan(topology_spec(app_args.deployment, app_args.planner, router)))
