"""The engine side of registration: keeps one worker registered with every router replica.

It registers, then heartbeats the engine's load every heartbeat_interval_s the router asks for. A
router that restarted answers NOT_FOUND and gets a fresh registration; an unreachable one is
retried on the next beat. Registering the same spec again is harmless (the router keeps the
worker's index), so the agent never needs to know which case it is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from glmserve.common.errors import GlmserveError, NotFoundError
from glmserve.router.client import RouterClient
from glmserve.router.types import Load, WorkerInfo

log = logging.getLogger("glmserve.router.agent")


class WorkerAgent:
    def __init__(
        self,
        routers: Sequence[RouterClient],
        worker: WorkerInfo,
        load: Callable[[], Load],
        interval_s: float = 2.0,
    ) -> None:
        self.worker = worker
        self._routers = list(routers)
        self._load = load
        self.interval_s = interval_s
        self._registered: set[int] = set()

    async def beat(self) -> None:
        """One round: a heartbeat to each router that knows the worker, a registration to the rest."""
        load = self._load()
        for i, router in enumerate(self._routers):
            try:
                if i in self._registered:
                    await router.heartbeat(self.worker.worker_id, load)
                else:
                    lease = await router.register(self.worker, load)
                    self._registered.add(i)
                    self.interval_s = min(self.interval_s, lease.heartbeat_interval_s)
            except NotFoundError:
                self._registered.discard(i)
                log.info("router %s forgot worker %s; registering again", router.target, self.worker.worker_id)
            except GlmserveError as exc:
                self._registered.discard(i)
                log.warning("router %s: %s", router.target, exc.message)

    async def run(self) -> None:
        """Beats until cancelled, then deregisters (best effort) so routing stops at once."""
        try:
            while True:
                await self.beat()
                await asyncio.sleep(self.interval_s)
        finally:
            for router in self._routers:
                with contextlib.suppress(GlmserveError):
                    await router.deregister(self.worker.worker_id)
