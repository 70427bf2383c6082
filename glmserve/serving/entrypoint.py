"""The RayService's Serve application: `import_path: glmserve.serving.entrypoint:app_builder`.

The operator renders `args` as `ServeAppArgs` (the ModelDeployment spec and the capacity plan
it chose); this builds the prefill and decode pools on their node groups' GPUs behind the
OpenAI ingress, with the engine arguments and placement the plan implies (vLLM's CPU backend on
CPU node groups).
"""

from __future__ import annotations

import os
import time
from typing import Any

from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment
from ray.serve.llm.deployment import LLMServer

from glmserve.common.config import STREAM_INTERVAL_MS
from glmserve.common.deployment import MODELS_DIR, ModelDeploymentSpec, Pool
from glmserve.common.deployment_plan import PoolLayoutStatus, ServeAppArgs
from glmserve.common.errors import ConfigError
from glmserve.common.placement import pool_placement, pool_resource
from glmserve.serving.app import CPU_ACCELERATOR, DEPLOYMENT_PREFIX, PINNED_ROUTER, experimental_configs
from glmserve.serving.engine.gpu_args import QUEUE_PER_SEQUENCE, gpu_engine_kwargs
from glmserve.serving.engine.registration import RouterLink
from glmserve.serving.engine.server import DataParallelEngineServer, EngineServer
from glmserve.serving.ingress.app import Ingress
from glmserve.serving.ingress.settings import IngressSettings, ServedModel


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


def _replicas(pool: Pool) -> dict[str, Any]:
    if pool.autoscaling is None:
        return {"num_replicas": pool.min_replicas}
    return {
        "autoscaling_config": {
            "min_replicas": pool.autoscaling.min_replicas,
            "initial_replicas": pool.autoscaling.min_replicas,
            "max_replicas": pool.autoscaling.max_replicas,
        }
    }


def pool_llm_config(
    spec: ModelDeploymentSpec, role: str, layout: PoolLayoutStatus, *, routed: bool = False
) -> LLMConfig:
    cores = layout.cpu.cores if layout.cpu else None
    placement = pool_placement(role, layout.node_group, layout.parallelism.layout(), cores)  # type: ignore[arg-type]
    model = spec.model.resolve()
    deployment: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0}, **_replicas(spec.pools()[role])}
    if routed:  # calls go to the replica glmserve's router chose for them
        deployment["request_router_config"] = {"request_router_class": PINNED_ROUTER}
    # vLLM's CPU backend on CPU node groups; Ray Serve LLM rejects an accelerator_type with it.
    device: dict[str, Any] = {"accelerator_config": CPU_ACCELERATOR} if layout.cpu else {"accelerator_type": layout.gpu}
    return LLMConfig(
        model_loading_config={
            "model_id": spec.model.served_name or spec.model.name,
            "model_source": model_source(model.source),
        },
        **device,
        placement_group_config={"bundles": list(placement.group.bundles), "strategy": placement.group.strategy},
        deployment_config=deployment,
        engine_kwargs=gpu_engine_kwargs(spec, role, layout),
        experimental_configs=experimental_configs(role, STREAM_INTERVAL_MS),  # type: ignore[arg-type]
        log_engine_metrics=True,
    )


def engine_class(layout: PoolLayoutStatus) -> type[LLMServer]:
    """A replica wider than one data-parallel rank is a gang of Serve replicas, one per rank."""
    return DataParallelEngineServer if layout.parallelism.data > 1 else EngineServer


def app_builder(args: dict[str, Any]) -> Application:
    app_args = ServeAppArgs.model_validate(args)
    spec, plan = app_args.deployment, app_args.planner
    name = spec.model.served_name or spec.model.name
    # The operator's router (a headless Service): engines register with each of its pods and
    # publish their KV events; the ingress asks it where each request goes.
    router = os.environ.get("GLMSERVE_ROUTER_ADDRESS") or None
    pools = {
        role: build_llm_deployment(
            pool_llm_config(spec, role, layout, routed=router is not None),
            deployment_cls=engine_class(layout),
            name_prefix=DEPLOYMENT_PREFIX[role],
            bind_kwargs={"router": RouterLink((router,), role, name) if router else None},  # type: ignore[arg-type]
        )
        for role, layout in plan.pools().items()
    }
    model = spec.model.resolve()
    decode = plan.decode
    served = ServedModel(
        name,
        model.max_context,
        model.thinking_default,
        int(time.time()),
        checkpoint=model_source(model.source),
        engine_kwargs=gpu_engine_kwargs(spec, "decode", decode),
        capacity=ingress_share(decode.max_replicas * spec.decode.max_concurrency, spec.ingress.replicas),
        max_waiting=ingress_share(
            decode.max_replicas * QUEUE_PER_SEQUENCE * spec.decode.max_concurrency, spec.ingress.replicas
        ),
    )
    # limits None: each ingress replica reads them from its own pod's environment.
    settings = IngressSettings(models=(served,), limits=None, router_address=router)
    # One replica per ingress pod, placed by the resource the ingress group advertises: a replica
    # elsewhere (the head) leaves the ingress pods without a Serve proxy, so the ingress Service
    # has no ready endpoint.
    placement = {"num_cpus": 0, "resources": {pool_resource("ingress"): 1}}
    # @serve.deployment turned the class into a Deployment, which mypy cannot see.
    return Ingress.options(  # type: ignore[attr-defined]
        num_replicas=spec.ingress.replicas, ray_actor_options=placement
    ).bind(engines={name: pools}, settings=settings)


def ingress_share(total: int, ingress_replicas: int) -> int:
    """What one ingress replica counts of the engines' `total` slots (or waiting places): Serve's
    proxies spread requests evenly over the replicas, and each replica holds its own line, so each
    counts its share (rounded up: none may have no slot). Counting all of them in every replica
    would let N replicas together fill N times the headroom kept for higher plans."""
    return -(-total // ingress_replicas)
