"""Whether, and where, a request runs.

The router is asked first: it picks the workers and, when it runs admission, also admits the
request against its plan and queues it by priority. When the router does not admit (none is
configured, none answers, or it leaves admission to the ingress), this replica admits the request
itself with the same `glmserve.admission` package: the plan limits against the limits store, then,
unless the router's flow control already gave it a slot, one of the model's engine slots in
plan-priority order; without the router's choice Serve balances.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from opentelemetry import trace

from glmserve.admission.tenants import ResolvedTenant
from glmserve.common.errors import OverloadedError, RateLimitedError
from glmserve.router.client import RouterUnavailableError
from glmserve.router.types import Decision
from glmserve.serving.ingress.gate import Gate
from glmserve.serving.ingress.life import RequestLife, Router
from glmserve.serving.ingress.metrics import ROUTER_UNAVAILABLE, IngressMetrics
from glmserve.serving.ingress.reply import Failed
from glmserve.serving.ingress.settings import ServedModel

log = logging.getLogger("glmserve.ingress")


@dataclass(frozen=True, slots=True)
class Grant:
    decision: Decision | None  # the router's workers; None: Serve balances
    engine_max_tokens: int | None  # the client's max_tokens, else its plan's cap (None: the engine's default)


QUEUE_FULL = "flow_queue_full"  # the router's flow control refused: its queue for the model is full
# How long a full queue is believed without seeing a slot free here: slots that free through
# other ingress replicas are not seen, and this bounds the refusals that one misses.
QUEUE_FULL_HOLD_S = 0.25


@dataclass(slots=True)
class FullQueues:
    """The tenants whose last request the router refused because the model's queue was full.
    The router would refuse their next requests too (same tenant, same band: they are served
    last again) until its queue moves, so this replica refuses them at once instead of rendering
    them and asking. A request for that model ending here moves the queue by one place: it lets
    one held request ask again, not all of them (under a flood every completion would otherwise
    send the whole flood to be rendered and refused by the router, on cores the admitted requests
    need). Slots that free through other ingress replicas are not seen, so a refusal is believed
    for QUEUE_FULL_HOLD_S at most. Other tenants still ask: the router may rank them ahead."""

    refused: dict[str, dict[str, tuple[float, OverloadedError]]] = field(default_factory=dict)
    places: dict[str, int] = field(default_factory=dict)  # model -> held requests that may ask again

    def check(self, model: str, tenant: str) -> None:
        """Raises the router's last refusal of `tenant` while it still holds and no place freed."""
        held = self.refused.get(model, {}).get(tenant)
        if held is None or time.monotonic() - held[0] >= QUEUE_FULL_HOLD_S:
            return
        if self.places.get(model, 0) > 0:
            self.places[model] -= 1
            return
        _, exc = held
        raise OverloadedError(exc.message, param=exc.param, code=exc.code, retry_after_s=exc.retry_after_s)

    def full(self, model: str, tenant: str, exc: OverloadedError) -> None:
        self.refused.setdefault(model, {})[tenant] = (time.monotonic(), exc)
        self.places[model] = 0  # the router is full now: the places freed before are taken

    def freed(self, model: str) -> None:
        if self.refused.get(model):
            self.places[model] = self.places.get(model, 0) + 1


class Admitter:
    def __init__(self, gate: Gate, router: Router | None, metrics: IngressMetrics) -> None:
        self._gate = gate
        self._router = router
        self._metrics = metrics
        self._full = FullQueues()

    def check_queue(self, model: str, tenant: ResolvedTenant) -> None:
        """Before anything costly: raises OverloadedError (503) when the router just refused this
        tenant for a full queue and no place in it freed since (FullQueues)."""
        if self._router is not None:
            self._full.check(model, tenant.id)

    async def admit(
        self,
        life: RequestLife,
        tenant: ResolvedTenant,
        served: ServedModel,
        prompt: Sequence[int],
        *,
        max_tokens: int | None,
        cache_salt: str,
    ) -> Grant | Failed:
        """The request may run (with the router's workers when it routed it), or the refusal to
        answer with. Raises the errors that refuse it otherwise (400/403 plan checks, 503 shed)."""
        routed = await self._route(life, tenant, served.name, prompt, max_tokens=max_tokens, cache_salt=cache_salt)
        if isinstance(routed, Failed):
            return routed
        if routed is not None and routed.admission is not None:
            life.headers.update(routed.admission.headers)
            return Grant(routed, routed.admission.engine_max_tokens)
        return await self._admit_locally(life, tenant, served, len(prompt), max_tokens=max_tokens, decision=routed)

    async def _route(
        self,
        life: RequestLife,
        tenant: ResolvedTenant,
        model: str,
        prompt: Sequence[int],
        *,
        max_tokens: int | None,
        cache_salt: str,
    ) -> Decision | Failed | None:
        """The router's decision (admitted, when it admits); None when there is no router to ask."""
        if self._router is None:
            return None
        span = life.timer.begin("route")
        try:
            decision = await self._router.route(
                life.request_id,
                model,
                prompt,
                tenant=tenant.id,
                cache_salt=cache_salt,
                max_tokens=max_tokens,
                priority=tenant.priority,
                trace_context=trace.set_span_in_context(span),
            )
        except RouterUnavailableError as exc:
            # Routing quality degrades, the request does not fail.
            log.warning("router unavailable (%s); Serve balances this request", exc.message)
            self._metrics.router_fallback(ROUTER_UNAVAILABLE)
            return None
        except RateLimitedError as exc:  # the router settled the refusal itself
            life.headers.update(exc.headers)
            return _refused(exc)
        except OverloadedError as exc:
            if exc.code == QUEUE_FULL:
                self._full.full(model, tenant.id, exc)
            raise
        life.hold_booking(self._router, on_end=lambda: self._full.freed(model))
        prefill = decision.prefill.worker_id if decision.prefill else None
        life.timer.routed(prefill, decision.decode.worker_id, decision.expected_cached_tokens, decision.policy)
        return decision

    async def _admit_locally(
        self,
        life: RequestLife,
        tenant: ResolvedTenant,
        served: ServedModel,
        prompt_tokens: int,
        *,
        max_tokens: int | None,
        decision: Decision | None,
    ) -> Grant | Failed:
        limiter = self._gate.limiter
        admission = await limiter.admit(tenant, model=served.name, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
        life.headers.update(admission.headers())
        if not admission.allowed:
            return _refused(admission.error())
        life.hold_admission(limiter, admission)
        if decision is not None and decision.slotted:
            return Grant(decision, admission.engine_max_tokens)
        slots = self._gate.slots(served.name, served.capacity, served.max_waiting)
        waiting = self._metrics.waiting.labels(served.name, tenant.priority)
        waiting.inc()
        try:
            await slots.acquire(tenant.priority)
        finally:
            waiting.dec()
        life.hold_slot(slots)
        self._metrics.share_scale.labels(served.name).set(slots.pace.scale)
        return Grant(decision, admission.engine_max_tokens)


def _refused(exc: RateLimitedError) -> Failed:
    # Its Retry-After is in its headers already, to the millisecond (retry-after-ms).
    return Failed(exc.kind.http_status, exc.message, exc.param, exc.code)
