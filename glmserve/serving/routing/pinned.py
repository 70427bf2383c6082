"""A Ray Serve request router that sends each call to the engine replica the router chose.

The ingress asks glmserve's router once per request and stamps the chosen replica on the body
it sends (`glmserve_target`); this routes the handle call there. Without a target, or when the
chosen replica is gone (Serve drops dead replicas from the candidates within milliseconds and
their replacements get new ids), it falls back to power-of-two-choices rather than waiting.
No FIFOMixin: with it, a replica chosen for one request would serve whichever request heads
the queue.

A migrated request (glmserve.serving.ingress.migration) names the replicas that failed it
(`glmserve_avoid`): it goes to one of the others, picked here and written back on its body as its
target, so that the ingress knows which replica to avoid should this one fail it too. When every
replica is to be avoided it goes to any: failing fast again beats waiting for a replacement.
Whichever way a call was routed, the replica that took it is written on its body, so that the
ingress knows which one failed it even when Serve chose (no router, or the router's pick gone).
"""

from __future__ import annotations

import random

from ray.serve.request_router import (
    LocalityMixin,
    MultiplexMixin,
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)


def pinned_target(pending: PendingRequest | None) -> str | None:
    if pending is None or not pending.args:
        return None
    return getattr(pending.args[0], "glmserve_target", None)


def avoided(pending: PendingRequest | None) -> tuple[str, ...]:
    if pending is None or not pending.args:
        return ()
    return tuple(getattr(pending.args[0], "glmserve_avoid", ()))


class PinnedRouter(LocalityMixin, MultiplexMixin, RequestRouter):
    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if target := pinned_target(pending_request):
            for replica in candidate_replicas:
                if replica.replica_id.unique_id == target:
                    return [[replica]]
        if not candidate_replicas:
            return []
        if avoid := avoided(pending_request):
            others = [r for r in candidate_replicas if r.replica_id.unique_id not in avoid]
            chosen = random.choice(others or candidate_replicas)
            assert pending_request is not None
            pending_request.args[0].glmserve_target = chosen.replica_id.unique_id
            return [[chosen]]
        # Two random candidates; Serve takes the one with the shorter queue.
        return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        if pending_request.args and hasattr(pending_request.args[0], "glmserve_target"):
            pending_request.args[0].glmserve_target = replica_id.unique_id
