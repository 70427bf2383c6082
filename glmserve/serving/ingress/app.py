"""The OpenAI-compatible ingress: a Ray Serve deployment in front of the engine replicas."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.responses import JSONResponse, Response, StreamingResponse
from vllm.entrypoints.generate.base.protocol import StreamOptions
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

from glmserve.common import tracing
from glmserve.common.errors import BackendError, GlmserveError, NotFoundError, OverloadedError
from glmserve.serving.ingress.discovery import ScrapeTarget, http_sd
from glmserve.serving.ingress.errors import error_response, install_handlers
from glmserve.serving.ingress.metrics import IngressMetrics, RequestTimer
from glmserve.serving.ingress.pd import PrefillRejected, decode_request, remote_prefill
from glmserve.serving.ingress.protocol import ChatRequest, TextCompletionRequest, parse_body
from glmserve.serving.ingress.responses import Usage, ends_stream, glm_message_fields, sse_stream

log = logging.getLogger("glmserve.ingress")

app = FastAPI(title="glmserve", docs_url=None, redoc_url=None)
install_handlers(app)


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str
    max_context: int
    thinking_default: bool
    created: int


@serve.deployment(name="Ingress", max_ongoing_requests=4096, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        engines: dict[str, dict[str, DeploymentHandle]],
        models: list[ServedModel],
        retry_after_s: float = 1.0,
        scrape_targets: Sequence[ScrapeTarget] = (),
        metrics_tenants: Sequence[str] = (),
    ) -> None:
        """`engines[model]` holds a "decode" pool (colocated engines in colocated mode) and, when
        disaggregated, a "prefill" pool. `scrape_targets`: every metrics endpoint of the stack."""
        self._engines = {name: pools["decode"].options(stream=True) for name, pools in engines.items()}
        self._prefill = {
            name: pools["prefill"].options(stream=True) for name, pools in engines.items() if "prefill" in pools
        }
        self._models = {m.name: m for m in models}
        self._retry_after_s = retry_after_s
        self._metrics = IngressMetrics(tracer=tracing.tracer("glmserve-ingress"), tenants=metrics_tenants)
        self._scrape_targets = http_sd(scrape_targets)

    # -- OpenAI API -------------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        body = parse_body(await request.body(), ChatRequest)
        return await self._generate("chat", body)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        body = parse_body(await request.body(), TextCompletionRequest)
        return await self._generate("completions", body)

    @app.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._card(m) for m in self._models.values()]}

    @app.get("/v1/models/{model:path}")
    async def get_model(self, model: str) -> dict[str, Any]:
        return self._card(self._served(model))

    # -- operations -----------------------------------------------------------------------

    @app.get("/health")
    async def health(self) -> Response:
        checks = {name: h.options(stream=False).check_health.remote() for name, h in self._engines.items()}
        failed = {}
        for name, pending in checks.items():
            try:
                await asyncio.wait_for(pending, timeout=10)
            except Exception as exc:  # any failure means that model cannot serve
                failed[name] = f"{type(exc).__name__}: {exc}"[:300]
        if failed:
            return JSONResponse({"status": "unhealthy", "engines": failed}, status_code=503)
        return JSONResponse({"status": "ok", "models": sorted(self._engines)})

    @app.get("/metrics")
    async def metrics(self) -> Response:
        return Response(generate_latest(self._metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/metrics/sd")
    async def metrics_sd(self) -> JSONResponse:
        """Prometheus HTTP service discovery: every metrics endpoint of the running stack."""
        return JSONResponse(self._scrape_targets)

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

    async def _generate(self, endpoint: str, body: ChatRequest | TextCompletionRequest) -> Response:
        served = self._served(body.model)
        body.model = served.name
        timer = self._metrics.start(endpoint, served.name)
        try:
            return await self._call_engine(endpoint, body, timer)
        except GlmserveError as exc:
            timer.finish(exc.kind.http_status)
            raise
        except BaseException:
            timer.finish(500)
            raise

    async def _call_engine(
        self, endpoint: str, body: ChatRequest | TextCompletionRequest, timer: RequestTimer
    ) -> Response:
        wants_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
        if body.stream:
            body.stream_options = StreamOptions(include_usage=True)
        model = body.model or ""
        if prefill := self._prefill.get(model):
            timer.begin("prefill")
            try:
                prefilled = await remote_prefill(prefill, endpoint, body)
            except PrefillRejected as rejected:
                return self._engine_error(rejected.error, timer)
            timer.prefilled(prefilled.fallback, prefilled.worker)
            body = decode_request(body, prefilled.kv_transfer_params)
        timer.begin("decode" if prefill else "generate")
        stream: DeploymentResponseGenerator = getattr(self._engines[model], endpoint).remote(body)
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            raise BackendError("the engine ended the request without a response") from None
        except Exception as exc:
            raise self._engine_exception(exc, body.model or "") from exc
        first_item = first[0] if isinstance(first, list) else first
        if isinstance(first_item, ErrorResponse):
            return self._engine_error(first_item.error, timer)
        if not body.stream:
            content = glm_message_fields(first_item.model_dump())
            usage = Usage.from_dict(content.get("usage"))
            timer.tokens_sent(1)
            timer.finish(200, usage)
            return JSONResponse(content)
        return StreamingResponse(
            self._relay(first, stream, wants_usage, timer),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    def _engine_exception(self, exc: Exception, model: str) -> GlmserveError:
        """Failures of the call itself; errors the engine reports arrive as ErrorResponse instead."""
        if isinstance(exc, BackPressureError | DeploymentUnavailableError):
            return OverloadedError(
                f"all {model} engine replicas are busy; retry shortly", retry_after_s=self._retry_after_s
            )
        cause = getattr(exc, "cause", None) or exc
        log.error("engine call for %s failed: %r", model, cause)
        return BackendError(f"the {model} engine failed ({type(cause).__name__}); the request was not completed")

    def _engine_error(self, error: Any, timer: RequestTimer) -> Response:
        status = int(error.code) if str(error.code).isdigit() else 500
        timer.finish(status)
        retry = self._retry_after_s if status in (429, 503) else None
        return error_response(status, error.message, param=error.param, retry_after_s=retry)

    async def _relay(
        self, first: list[str], rest: DeploymentResponseGenerator, wants_usage: bool, timer: RequestTimer
    ) -> AsyncIterator[bytes]:
        async def batches() -> AsyncIterator[list[str]]:
            yield first
            async for batch in rest:
                yield batch

        usage = Usage()
        status = 499  # nginx's "client closed request", if the client goes away first
        try:
            async for chunk in sse_stream(
                batches(), client_wants_usage=wants_usage, usage=usage, on_events=timer.tokens_sent
            ):
                if ends_stream(chunk):
                    status = 200  # complete: the OpenAI client closes as soon as it reads [DONE]
                yield chunk
            status = 200
        finally:
            rest.cancel()
            timer.finish(status, usage)
