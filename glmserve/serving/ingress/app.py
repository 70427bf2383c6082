"""The OpenAI-compatible ingress: a Ray Serve deployment in front of the engine pools."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.responses import JSONResponse, Response

from glmserve.common import tracing
from glmserve.common.errors import NotFoundError
from glmserve.common.tenancy import PRIORITY_RANK
from glmserve.router.replicas import connect
from glmserve.serving.ingress.discovery import http_sd
from glmserve.serving.ingress.engine_call import Caller, EngineCall, EngineReply
from glmserve.serving.ingress.errors import error_response, install_handlers, status_of
from glmserve.serving.ingress.gate import Gate
from glmserve.serving.ingress.metrics import IngressMetrics
from glmserve.serving.ingress.protocol import ChatRequest, TextCompletionRequest, check_context, parse_body
from glmserve.serving.ingress.render import PromptRenderer
from glmserve.serving.ingress.responses import ClosingStreamingResponse, Usage
from glmserve.serving.ingress.settings import IngressSettings, ServedModel, limits_from_environment

log = logging.getLogger("glmserve.ingress")

app = FastAPI(title="glmserve", docs_url=None, redoc_url=None)
install_handlers(app)

Body = ChatRequest | TextCompletionRequest


@serve.deployment(name="Ingress", max_ongoing_requests=4096, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Ingress:
    def __init__(self, engines: dict[str, dict[str, DeploymentHandle]], settings: IngressSettings) -> None:
        """`engines[model]` holds a "decode" pool (colocated engines in colocated mode) and, when
        disaggregated, a "prefill" pool."""
        registry = CollectorRegistry()
        self._metrics = IngressMetrics(
            registry,
            tracer=tracing.tracer("glmserve-ingress"),
            tenants=settings.metrics_tenants,
            trust_client_trace=tracing.trusts_client(),
        )
        self._registry = registry
        self._settings = settings
        self._models = {m.name: m for m in settings.models}
        self._renderers = {m.name: PromptRenderer(m.checkpoint, m.engine_kwargs) for m in settings.models}
        limits = settings.limits if settings.limits is not None else limits_from_environment()
        self._gate = Gate(limits, registry, settings.retry_after_s)
        router = connect(settings.router_address) if settings.router_address else None
        self._calls = {
            name: EngineCall(
                pools["decode"], pools.get("prefill"), settings.retry_after_s, router, self._metrics.router_fallback
            )
            for name, pools in engines.items()
        }

    # -- OpenAI API -------------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        body = parse_body(await request.body(), ChatRequest)
        return await self._generate("chat", body, request)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        body = parse_body(await request.body(), TextCompletionRequest)
        return await self._generate("completions", body, request)

    @app.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._card(m) for m in self._models.values()]}

    @app.get("/v1/models/{model:path}")
    async def get_model(self, model: str) -> dict[str, Any]:
        return self._card(self._served(model))

    # -- operations -----------------------------------------------------------------------

    @app.get("/health")
    async def health(self) -> Response:
        checks = {name: call.check_health() for name, call in self._calls.items()}
        failed = {}
        for name, pending in checks.items():
            try:
                await asyncio.wait_for(pending, timeout=10)
            except Exception as exc:  # any failure means that model cannot serve
                failed[name] = f"{type(exc).__name__}: {exc}"[:300]
        if failed:
            return JSONResponse({"status": "unhealthy", "engines": failed}, status_code=503)
        return JSONResponse({"status": "ok", "models": sorted(self._calls)})

    @app.get("/metrics")
    async def metrics(self) -> Response:
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/metrics/sd")
    async def metrics_sd(self) -> JSONResponse:
        """Prometheus HTTP service discovery: every metrics endpoint of the running stack."""
        return JSONResponse(http_sd(self._settings.scrape_targets))

    # -- internals ------------------------------------------------------------------------

    def _served(self, name: str | None) -> ServedModel:
        if name is None and len(self._models) == 1:
            return next(iter(self._models.values()))
        if name is None:
            raise NotFoundError("'model' is required: this server has several models", param="model")
        try:
            return self._models[name]
        except KeyError:
            raise NotFoundError(
                f"The model '{name}' does not exist. Available: {', '.join(sorted(self._models))}",
                param="model",
                code="model_not_found",
            ) from None

    @staticmethod
    def _card(model: ServedModel) -> dict[str, Any]:
        return {
            "id": model.name,
            "object": "model",
            "created": model.created,
            "owned_by": "glmserve",
            "max_model_len": model.max_context,
        }

    async def _tokens(self, endpoint: str, body: Body, served: ServedModel) -> list[int]:
        renderer = self._renderers[served.name]
        if isinstance(body, ChatRequest):
            return await renderer.chat_tokens(body)
        return await renderer.completion_tokens(body)

    async def _generate(self, endpoint: str, body: Body, request: Request) -> Response:
        tenant = self._gate.authenticate(request.headers.get("authorization"))
        served = self._served(body.model)
        body.model = served.name
        timer = self._metrics.start(endpoint, served.name, plan=tenant.plan, tenant=tenant.id, headers=request.headers)
        try:
            prompt = await self._tokens(endpoint, body, served)
            max_tokens = body.max_completion_tokens if isinstance(body, ChatRequest) else None
            max_tokens = max_tokens or body.max_tokens
            check_context(served.max_context, len(prompt), max_tokens)
            admission = await self._gate.limiter.admit(
                tenant, model=served.name, prompt_tokens=len(prompt), max_tokens=max_tokens
            )
        except BaseException as exc:
            timer.finish(status_of(exc))
            raise
        headers = admission.headers()
        if not admission.allowed:
            timer.finish(429)
            error = admission.error()
            return error_response(429, error.message, code=error.code, param=error.param, headers=headers)
        slots = self._gate.slots(served.name, served.capacity, served.max_waiting)
        waiting = self._metrics.waiting.labels(served.name, tenant.priority)
        waiting.inc()
        try:
            await slots.acquire(tenant.priority)
        except BaseException as exc:
            self._gate.limiter.settle(admission, output_tokens=0)
            timer.finish(status_of(exc))
            raise
        finally:
            waiting.dec()
        timer.on_gap = slots.observe_gap
        self._metrics.share_scale.labels(served.name).set(slots.pace.scale)
        if body.max_tokens is None and admission.engine_max_tokens is not None:
            body.max_tokens = admission.engine_max_tokens
        body.cache_salt = self._gate.salter.salt(tenant)
        body.priority = PRIORITY_RANK[tenant.priority]
        caller = Caller(tenant.id, body.cache_salt, tenant.priority)

        def done(status: int, usage: Usage) -> None:
            slots.release()
            self._gate.limiter.settle(
                admission, output_tokens=usage.completion_tokens, input_tokens=usage.prompt_tokens or None
            )
            timer.finish(status, usage)

        try:
            reply = await self._calls[served.name].run(endpoint, body, prompt, caller, timer)
        except BaseException as exc:
            done(status_of(exc), Usage())
            raise
        return self._respond(reply, headers, done)

    @staticmethod
    def _respond(reply: EngineReply, headers: dict[str, str], done: Any) -> Response:
        if reply.error is not None:
            done(reply.error.status, Usage())
            return error_response(
                reply.error.status,
                reply.error.message,
                param=reply.error.param,
                retry_after_s=reply.error.retry_after_s,
                headers=headers,
            )
        if reply.body is not None:
            done(200, reply.usage)
            return JSONResponse(reply.body, headers=headers)
        assert reply.stream is not None
        return ClosingStreamingResponse(
            reply.stream(done),
            on_close=lambda: reply.abandon(done),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no", **headers},
        )
