"""The engine side of registration: keeps one worker registered with every router replica.

It registers, then heartbeats the engine's load every heartbeat_interval_s the router asks for. A
router that restarted answers NOT_FOUND and gets a fresh registration; an unreachable one is
retried on the next beat. Registering the same spec again is harmless (the router keeps the
worker's index), so the agent never needs to know which case it is in.

Which replicas there are is looked up again on every beat (`replicas.router_replicas`): in a cluster the
router's address is a headless Service, whose name resolves to one address per router pod, and
a pod that restarts comes back at a new address, with an empty index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from glmserve.common.errors import GlmserveError, NotFoundError
from glmserve.router.client import RouterClient
from glmserve.router.replicas import Resolve
from glmserve.router.types import Load, WorkerInfo

log = logging.getLogger("glmserve.router.agent")


class WorkerAgent:
    def __init__(
        self,
        resolve: Resolve,
        worker: WorkerInfo,
        load: Callable[[], Load],
        interval_s: float = 2.0,
    ) -> None:
        self.worker = worker
        self._resolve = resolve
        self._load = load
        self.interval_s = interval_s
        self._routers: dict[str, RouterClient] = {}
        self._registered: set[str] = set()

    async def _follow_replicas(self) -> None:
        targets = set(await self._resolve())
        for gone in self._routers.keys() - targets:
            self._registered.discard(gone)
            await self._routers.pop(gone).close()
        for target in sorted(targets - self._routers.keys()):
            self._routers[target] = RouterClient(target)

    async def beat(self) -> None:
        """One round: a heartbeat to each router that knows the worker, a registration to the rest."""
        await self._follow_replicas()
        load = self._load()
        for target, router in self._routers.items():
            try:
                if target in self._registered:
                    await router.heartbeat(self.worker.worker_id, load)
                else:
                    lease = await router.register(self.worker, load)
                    self._registered.add(target)
                    self.interval_s = min(self.interval_s, lease.heartbeat_interval_s)
            except NotFoundError:
                self._registered.discard(target)
                log.info("router %s forgot worker %s; registering again", target, self.worker.worker_id)
            except GlmserveError as exc:
                self._registered.discard(target)
                log.warning("router %s: %s", target, exc.message)

    async def run(self) -> None:
        """Beats until cancelled, then deregisters (best effort) so routing stops at once."""
        try:
            while True:
                await self.beat()
                await asyncio.sleep(self.interval_s)
        finally:
            for router in self._routers.values():
                with contextlib.suppress(GlmserveError):
                    await router.deregister(self.worker.worker_id)
                await router.close()
