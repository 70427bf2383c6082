"""The ingress's request path, apart from the Serve deployment that hosts it (app.py): parse,
authenticate, render, admit, drive the engines, answer, each request owned by one RequestLife."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping

from prometheus_client import CollectorRegistry
from ray.serve.handle import DeploymentHandle
from starlette.responses import Response

from glmserve.admission.tenants import ResolvedTenant
from glmserve.common import tracing
from glmserve.common.errors import NotFoundError, OverloadedError
from glmserve.router.replicas import connect
from glmserve.serving.ingress.admit import Admitter
from glmserve.serving.ingress.engine_call import EngineCall
from glmserve.serving.ingress.engine_request import Endpoint, EngineRequest
from glmserve.serving.ingress.gate import Gate
from glmserve.serving.ingress.life import Background, RequestLife, Router
from glmserve.serving.ingress.metrics import IngressMetrics
from glmserve.serving.ingress.protocol import ChatRequest, TextCompletionRequest, check_context, client_max_tokens
from glmserve.serving.ingress.render import PromptRenderer
from glmserve.serving.ingress.reply import Failed, Reply
from glmserve.serving.ingress.running import RunningReplicas
from glmserve.serving.ingress.settings import IngressSettings, ServedModel, limits_from_environment
from glmserve.serving.ingress.throttle import FailedKeyThrottle

Body = ChatRequest | TextCompletionRequest


class IngressService:
    def __init__(
        self,
        engines: Mapping[str, Mapping[str, DeploymentHandle]],
        settings: IngressSettings,
        *,
        router: Router | None = None,
        running: Mapping[str, RunningReplicas] | None = None,
    ) -> None:
        """`engines[model]` holds a "decode" pool (colocated engines in colocated mode) and, when
        disaggregated, a "prefill" pool. `router`: the client of settings.router_address (made
        from it when not given); `running[model]`: its decode pool's running replicas (running.py)."""
        self.registry = CollectorRegistry()
        self.metrics = IngressMetrics(
            self.registry,
            tracer=tracing.tracer("glmserve-ingress"),
            tenants=settings.metrics_tenants,
            trust_client_trace=tracing.trusts_client(),
        )
        self.models = {m.name: m for m in settings.models}
        self._renderers = {m.name: PromptRenderer(m.checkpoint, m.engine_kwargs) for m in settings.models}
        limits = settings.limits if settings.limits is not None else limits_from_environment()
        bounds = settings.request_limits
        throttle = FailedKeyThrottle(bounds.max_failed_keys, bounds.failed_keys_window_s)
        self.gate = Gate(limits, self.registry, settings.retry_after_s, throttle)
        if router is None and settings.router_address:
            router = connect(settings.router_address, route_timeout_s=settings.route_timeout_s)
        self._admitter = Admitter(self.gate, router, self.metrics)
        self.calls = {
            name: EngineCall(
                pools["decode"],
                pools.get("prefill"),
                settings.retry_after_s,
                settings.migration,
                tool_call_ids=self._renderers[name].token_ids("<tool_call>"),
                running=(running or {}).get(name),
            )
            for name, pools in engines.items()
        }
        self.background = Background()
        self._retry_after_s = settings.retry_after_s
        self.draining = False  # set when the stack stops: requests in flight finish, new ones get 503

    def drain(self) -> None:
        """Refuse new requests from now on (503 + Retry-After, so clients go elsewhere or retry);
        those in flight run to their end while Serve drains this replica."""
        self.draining = True

    async def generate(
        self, endpoint: Endpoint, body: Body, headers: Mapping[str, str], client: str | None = None
    ) -> Response:
        """One request, answered; it has ended (or ends with its stream) whatever happened.
        `client`: the caller's address (its failed API keys are throttled)."""
        if self.draining:
            raise OverloadedError("the server is shutting down; retry shortly", retry_after_s=self._retry_after_s)
        tenant = self.gate.authenticate(headers.get("authorization"), client)
        served = self.served(body.model)
        timer = self.metrics.start(endpoint, served.name, plan=tenant.plan, tenant=tenant.id, headers=headers)
        life = RequestLife(uuid.uuid4().hex, timer, self.background)
        return life.respond(await life.guard(self._reply(endpoint, body, served, tenant, life)))

    async def _reply(
        self, endpoint: Endpoint, body: Body, served: ServedModel, tenant: ResolvedTenant, life: RequestLife
    ) -> Reply:
        self._admitter.check_queue(served.name, tenant)
        prompt = await self._tokens(body, served)
        max_tokens = client_max_tokens(body)
        check_context(served.max_context, len(prompt), max_tokens)
        salt = self.gate.salter.salt(tenant)
        grant = await self._admitter.admit(life, tenant, served, prompt, max_tokens=max_tokens, cache_salt=salt)
        if isinstance(grant, Failed):
            return grant
        request = EngineRequest(
            request_id=life.request_id,
            endpoint=endpoint,
            client=body,
            model=served.name,
            prompt=tuple(prompt),
            tenant=tenant.id,
            priority=tenant.priority,
            cache_salt=salt,
            max_tokens=grant.engine_max_tokens,
        )
        return await self.calls[served.name].run(request, grant.decision, life)

    def served(self, name: str | None) -> ServedModel:
        if name is None and len(self.models) == 1:
            return next(iter(self.models.values()))
        if name is None:
            raise NotFoundError("'model' is required: this server has several models", param="model")
        try:
            return self.models[name]
        except KeyError:
            raise NotFoundError(
                f"The model '{name}' does not exist. Available: {', '.join(sorted(self.models))}",
                param="model",
                code="model_not_found",
            ) from None

    async def check_health(self) -> dict[str, str]:
        """Each model whose engines do not answer, with why."""
        checks = {name: call.check_health() for name, call in self.calls.items()}
        failed = {}
        for name, pending in checks.items():
            try:
                await asyncio.wait_for(pending, timeout=10)
            except Exception as exc:  # any failure means that model cannot serve
                failed[name] = f"{type(exc).__name__}: {exc}"[:300]
        return failed

    async def _tokens(self, body: Body, served: ServedModel) -> list[int]:
        renderer = self._renderers[served.name]
        if isinstance(body, ChatRequest):
            return await renderer.chat_tokens(body)
        return await renderer.completion_tokens(body)
