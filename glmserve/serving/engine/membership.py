"""When Serve takes this replica out of its deployment's running set, the replica is being stopped.

Serve gives the user callable no hook when a stop begins: the replica drains its ongoing requests
for up to graceful_shutdown_timeout_s and only then calls `__del__`. Its handles learn at once,
though: the controller drops a stopping replica from the running replicas it broadcasts
(long poll on DEPLOYMENT_TARGETS), the same message that stops handles from sending it calls.
Following that broadcast lets the replica leave glmserve's router when its drain starts, not when it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import ray
from ray.serve._private.common import DeploymentID, DeploymentTargetInfo, ReplicaID
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve._private.long_poll import LongPollClient, LongPollNamespace

log = logging.getLogger("glmserve.engine")


Change = Literal["left", "back"]


@dataclass(slots=True)
class RunningSet:
    """Whether one replica is in its deployment's running set, and when that changes."""

    replica: str
    seen: bool = False  # a starting replica is not in the set yet: only leaving after it counts
    inside: bool = False

    def update(self, running: set[str], available: bool) -> Change | None:
        now_inside = self.replica in running and available
        if now_inside == self.inside:
            return None
        self.inside = now_inside
        if now_inside:
            change: Change | None = "back" if self.seen else None
            self.seen = True
            return change
        return "left"


class Membership:
    """Calls `on_leave` when the replica leaves its deployment's running replicas (scaled down,
    replaced, or the deployment deleted), and `on_back` if it returns: a Serve controller that
    restarts recovers its replicas before it counts them running again, and a replica it keeps
    must not stay out of the router."""

    def __init__(self, replica_id: ReplicaID, on_leave: Callable[[], None], on_back: Callable[[], None]) -> None:
        self._replica_id = replica_id
        self._handlers = {"left": on_leave, "back": on_back}
        self.running = RunningSet(replica_id.unique_id)
        deployment: DeploymentID = replica_id.deployment_id
        self._client = LongPollClient(
            ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE),
            {(LongPollNamespace.DEPLOYMENT_TARGETS, deployment): self.update},  # type: ignore[dict-item]
            call_in_event_loop=asyncio.get_running_loop(),
            client_id=f"glmserve-membership:{replica_id.unique_id}",
        )

    def update(self, targets: DeploymentTargetInfo) -> None:
        running = {info.replica_id.unique_id for info in targets.running_replicas}
        change = self.running.update(running, targets.is_available)
        if change is not None:
            log.info("replica %s: %s the running set", self._replica_id.unique_id, change)
            self._handlers[change]()

    def stop(self) -> None:
        self._client.stop()
