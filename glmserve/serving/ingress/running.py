"""Which replicas of an engine pool Serve counts running, as its controller broadcasts them.

A request whose engine failed moves only if another replica is running (migration.py). Asking
Serve's handle instead would not end: a handle queues a call until some replica of the deployment
takes it, and a pool whose only replica was lost with its host has none until a new host has
loaded a new engine (a minute or more). The ingress follows the set as Serve's handles do: the
controller's long poll on DEPLOYMENT_TARGETS, whose last answer stays known while the controller
is away (the head lost).
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol

import ray
from ray.serve._private.common import DeploymentID, DeploymentTargetInfo
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve._private.long_poll import LongPollClient, LongPollNamespace


class RunningReplicas(Protocol):
    def running(self) -> frozenset[str] | None:
        """The running replicas' ids; None while not known."""
        ...


class ServeRunning:
    """One deployment's running replicas, followed from the first call of `running` on, in the
    replica's event loop. The controller is looked up at once: a lookup blocks, and a first request
    while the head is away must not block the ingress's loop."""

    def __init__(self, deployment: DeploymentID) -> None:
        self._deployment = deployment
        self._controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        self._client: LongPollClient | None = None
        self._running: frozenset[str] | None = None

    def running(self) -> frozenset[str] | None:
        if self._client is None:
            self._client = LongPollClient(
                self._controller,
                {(LongPollNamespace.DEPLOYMENT_TARGETS, self._deployment): self._update},  # type: ignore[dict-item]
                call_in_event_loop=asyncio.get_running_loop(),
                client_id=f"glmserve-ingress:{os.getpid()}:{self._deployment}",
            )
        return self._running

    def _update(self, targets: DeploymentTargetInfo) -> None:
        replicas = targets.running_replicas if targets.is_available else []
        self._running = frozenset(info.replica_id.unique_id for info in replicas)
