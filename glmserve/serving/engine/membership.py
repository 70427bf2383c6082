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

import ray
from ray.serve._private.common import DeploymentID, DeploymentTargetInfo, ReplicaID
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve._private.long_poll import LongPollClient, LongPollNamespace

log = logging.getLogger("glmserve.engine")


@dataclass(slots=True)
class RunningSet:
    """Whether one replica, having been running, has left its deployment's running set."""

    replica: str
    seen: bool = False  # a starting replica is not in the set yet: only leaving after it counts
    left: bool = False

    def update(self, running: set[str], available: bool) -> bool:
        """True once: on the first update without the replica after one with it."""
        if self.replica in running and available:
            self.seen = True
            return False
        if self.seen and not self.left:
            self.left = True
            return True
        return False


class Membership:
    """Calls `on_leave` once, when the replica leaves its deployment's running replicas (scaled
    down, replaced, or the deployment deleted)."""

    def __init__(self, replica_id: ReplicaID, on_leave: Callable[[], None]) -> None:
        self._replica_id = replica_id
        self._on_leave = on_leave
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
        if self.running.update(running, targets.is_available):
            self._client.stop()
            log.info("replica %s leaves the running set: draining", self._replica_id.unique_id)
            self._on_leave()

    def stop(self) -> None:
        self._client.stop()
