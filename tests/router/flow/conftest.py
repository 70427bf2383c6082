"""Flow control driven through the real Router: its static workers are the capacity."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from glmserve.router.config import RouterConfig
from glmserve.router.flow import Ticket
from glmserve.router.router import Router
from glmserve.router.types import Decision, RouteQuery, Usage

PROMPT = np.arange(64, dtype=np.uint32)


def make_router(slots: int = 1, **flow: Any) -> Router:
    """A router whose one decode worker runs `slots` requests; `flow` sets its flow config (tenants
    a and b name the metrics)."""
    worker = {"worker_id": "w0", "model": "m", "address": "w0:1", "max_running_requests": slots}
    flow = {"metrics_tenants": ["a", "b"]} | flow
    return Router(RouterConfig.model_validate({"workers": {"static": [worker]}, "flow": flow}))


def ticket(request_id: str, tenant: str = "t", band: int = 2, weight: float = 1.0, cost: float = 100.0) -> Ticket:
    return Ticket(request_id, "m", tenant, band, weight, cost)


async def admit(router: Router, t: Ticket) -> Decision:
    """What the Route call does: wait for a slot, then route at once (late binding)."""
    await router.flow.acquire(t)
    return router.route(RouteQuery(t.request_id, t.tenant, t.model, PROMPT))


def finish(router: Router, request_id: str) -> None:
    """What the Complete call does."""
    router.complete(request_id, "finished", Usage())
    router.flow.release(request_id)


async def settle() -> None:
    """Lets every task that can run, run."""
    for _ in range(5):
        await asyncio.sleep(0)
