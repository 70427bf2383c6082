"""Which replicas a scale-down stops: the cheapest to lose, within Serve's own choice of nodes.

Ray Serve 2.60 offers no hook for this. Its controller asks the deployment scheduler for `n`
replicas to stop (`DeploymentScheduler._get_replicas_to_stop`, private): replicas not running yet
first, then running ones off the head node, on nodes that run the fewest replicas (to free nodes),
newest first. The scheduler is built by `default_impl.create_deployment_scheduler` with no plug
point; a custom autoscaling policy returns a replica count only; a deployment's options (placement,
labels, ranks) do not enter the choice; and a replica cannot leave on its own terms (failing its
health check gets it replaced, and the deployment reported unhealthy).

So glmserve wraps that one method inside Serve's controller (`install`, called when the controller
builds glmserve's pool policy): Serve still decides how many replicas leave each node, and stops
replicas that are not running first; glmserve only exchanges a running replica that Serve chose
for a cheaper running replica of the same deployment on the same node. The cost of a replica is
what the router sees in it: requests running and waiting (streams that must finish before it
stops), then KV blocks cached (prefixes the others must recompute). The pool policy publishes the
costs each tick; a deployment without them (no Prometheus, Serve's default policy, a gang of
data-parallel ranks) or a replica of unknown cost keeps Serve's choice.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve._private.constants import SERVE_LOGGER_NAME
from ray.serve._private.deployment_scheduler import DeploymentScheduler

# This runs inside Serve's controller, whose log file hangs on Serve's logger, which does not
# propagate to the root: a child of it is what reaches that file.
log = logging.getLogger(f"{SERVE_LOGGER_NAME}.glmserve.scale_down")

Cost = tuple[float, float]  # (requests running and waiting, KV blocks cached)

_costs: dict[DeploymentID, dict[str, Cost]] = {}


def publish(deployment: DeploymentID, costs: Mapping[str, Cost]) -> None:
    """The current cost of each of `deployment`'s replicas, by replica id (an empty map: unknown)."""
    _costs[deployment] = dict(costs)


def cheapest(chosen: set[str], running: Mapping[str, str], costs: Mapping[str, Cost]) -> set[str]:
    """`chosen` with each node's running replicas in it replaced by that node's cheapest.

    `running`: replica -> node, oldest first (Serve's order). On a node where a replica's cost is
    unknown, Serve's choice stands; among equal costs Serve's own pick is kept."""
    by_node: dict[str, list[str]] = defaultdict(list)
    for replica, node in running.items():
        by_node[node].append(replica)
    result = chosen - running.keys()  # not running yet: Serve stops those first, and so do we
    for replicas in by_node.values():
        leaving = [r for r in replicas if r in chosen]
        if not leaving or any(r not in costs for r in replicas):
            result.update(leaving)
            continue
        ranked = sorted(replicas, key=lambda r: (costs[r], r not in chosen))
        result.update(ranked[: len(leaving)])
    return result


def install() -> None:
    """Wrap Serve's choice of replicas to stop (idempotent: one wrapper per process)."""
    original = DeploymentScheduler._get_replicas_to_stop
    if getattr(original, "glmserve", False):
        return

    @functools.wraps(original)
    def choose(
        self: DeploymentScheduler, deployment_id: DeploymentID, max_num_to_stop: int, **kwargs: Any
    ) -> set[ReplicaID]:
        chosen: set[ReplicaID] = original(self, deployment_id, max_num_to_stop, **kwargs)
        costs = _costs.get(deployment_id)
        if not costs or kwargs.get("gang_id_by_replica") is not None:
            return chosen
        running: dict[ReplicaID, str] = self._running_replicas[deployment_id]
        by_id = {r.unique_id: r for r in (*chosen, *running)}
        picked = cheapest({r.unique_id for r in chosen}, {r.unique_id: node for r, node in running.items()}, costs)
        if picked != {r.unique_id for r in chosen}:
            log.info("stopping %s instead of %s: cheaper to lose", sorted(picked), sorted(r.unique_id for r in chosen))
        return {by_id[r] for r in picked}

    choose.glmserve = True  # type: ignore[attr-defined]
    DeploymentScheduler._get_replicas_to_stop = choose  # type: ignore[method-assign,assignment]
