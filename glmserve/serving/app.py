"""The Ray Serve application: engine deployments behind the OpenAI ingress."""

from __future__ import annotations

import time
from typing import Any

from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from glmserve.common.config import ServeConfig
from glmserve.serving.engine.args import Device, engine_kwargs
from glmserve.serving.engine.server import EngineServer
from glmserve.serving.ingress.app import Ingress, ServedModel
from glmserve.serving.models import ResolvedModel

APP_NAME = "glmserve"


def llm_config(model: ResolvedModel, cfg: ServeConfig, device: Device) -> LLMConfig:
    deployment: dict[str, Any] = {
        "num_replicas": cfg.replicas,
        # The replica actor only relays; vLLM's engine processes hold the CPUs/GPUs (placement bundles).
        "ray_actor_options": {"num_cpus": 0},
        # Above vLLM's own admission limit, so vLLM (not Ray) decides when a replica is full.
        "max_ongoing_requests": 2 * (cfg.max_ongoing_requests + cfg.max_queued_requests),
    }
    extra: dict[str, Any] = {"accelerator_config": {"kind": "cpu"}} if device == "cpu" else {}
    return LLMConfig(
        model_loading_config={"model_id": model.name, "model_source": str(model.path)},
        deployment_config=deployment,
        engine_kwargs=engine_kwargs(model, cfg, device),
        log_engine_metrics=True,
        **extra,
    )


def build_app(model: ResolvedModel, cfg: ServeConfig, device: Device) -> Application:
    engine = build_llm_deployment(llm_config(model, cfg, device), deployment_cls=EngineServer, name_prefix="Engine:")
    served = ServedModel(model.name, cfg.max_model_len or model.max_context, model.thinking_default, int(time.time()))
    # @serve.deployment turned the class into a Deployment, which mypy cannot see.
    return Ingress.bind(  # type: ignore[attr-defined]
        engines={model.name: engine}, models=[served], retry_after_s=cfg.retry_after_s
    )
