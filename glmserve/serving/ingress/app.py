"""The OpenAI-compatible ingress: a Ray Serve deployment in front of the engine pools."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.responses import JSONResponse, Response

from glmserve.serving.ingress.discovery import http_sd
from glmserve.serving.ingress.errors import install_handlers
from glmserve.serving.ingress.limits import RequestLimits
from glmserve.serving.ingress.middleware import RequestLimitsMiddleware
from glmserve.serving.ingress.openapi import request_body, with_components
from glmserve.serving.ingress.protocol import ChatRequest, TextCompletionRequest, parse_body
from glmserve.serving.ingress.running import ServeRunning
from glmserve.serving.ingress.service import IngressService
from glmserve.serving.ingress.settings import IngressSettings, ServedModel


def _replica_limits() -> RequestLimits:
    # Serve serves a frozen copy of `app`, built before any replica knew its settings; Serve's own
    # class-based views find the replica the same way.
    ingress: Any = serve.get_replica_context().servable_object
    limits: RequestLimits = ingress.request_limits
    return limits


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


# Everything the routes below use is defined above them: serve.ingress freezes the app (its
# routes' functions and the globals they name) when the class is decorated.
app = FastAPI(title="glmserve", docs_url=None, redoc_url=None)
install_handlers(app)
app.add_middleware(RequestLimitsMiddleware, limits=_replica_limits)


def _openapi() -> dict[str, Any]:
    if app.openapi_schema is None:
        app.openapi_schema = with_components(FastAPI.openapi(app), (ChatRequest, TextCompletionRequest))
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]


@serve.deployment(name="Ingress", max_ongoing_requests=4096, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Ingress:
    def __init__(self, engines: dict[str, dict[str, DeploymentHandle]], settings: IngressSettings) -> None:
        """`engines[model]` holds a "decode" pool (colocated engines in colocated mode) and, when
        disaggregated, a "prefill" pool."""
        running = {name: ServeRunning(pools["decode"].deployment_id) for name, pools in engines.items()}
        self._service = IngressService(engines, settings, running=running)
        self._settings = settings
        self.request_limits = settings.request_limits

    # -- OpenAI API -------------------------------------------------------------------------

    # The bodies are parsed by parse_body (OpenAI-shaped errors, depth limit), not by FastAPI, so
    # the OpenAPI document is told what they are.
    @app.post("/v1/chat/completions", openapi_extra=request_body(ChatRequest))
    async def chat_completions(self, request: Request) -> Response:
        body = parse_body(await request.body(), ChatRequest, self.request_limits.max_json_depth)
        return await self._service.generate("chat", body, request.headers, _client(request))

    @app.post("/v1/completions", openapi_extra=request_body(TextCompletionRequest))
    async def completions(self, request: Request) -> Response:
        body = parse_body(await request.body(), TextCompletionRequest, self.request_limits.max_json_depth)
        return await self._service.generate("completions", body, request.headers, _client(request))

    @app.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._card(m) for m in self._service.models.values()]}

    @app.get("/v1/models/{model:path}")
    async def get_model(self, model: str) -> dict[str, Any]:
        return self._card(self._service.served(model))

    # -- operations -----------------------------------------------------------------------

    def drain(self) -> None:
        """Called over a Serve handle by `glmserve up` as it stops, before Serve drains the replica."""
        self._service.drain()

    @app.get("/health")
    async def health(self) -> Response:
        failed = await self._service.check_health()
        if failed:
            return JSONResponse({"status": "unhealthy", "engines": failed}, status_code=503)
        return JSONResponse({"status": "ok", "models": sorted(self._service.calls)})

    @app.get("/metrics")
    async def metrics(self) -> Response:
        return Response(generate_latest(self._service.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/metrics/sd")
    async def metrics_sd(self) -> JSONResponse:
        """Prometheus HTTP service discovery: every metrics endpoint of the running stack."""
        return JSONResponse(http_sd(self._settings.scrape_targets))

    @staticmethod
    def _card(model: ServedModel) -> dict[str, Any]:
        return {
            "id": model.name,
            "object": "model",
            "created": model.created,
            "owned_by": "glmserve",
            "max_model_len": model.max_context,
        }
