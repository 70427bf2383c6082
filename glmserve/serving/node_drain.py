"""A Ray pod's pre-stop drain: the pod leaves only once the Serve replicas on its node have finished.

Kubernetes deletes a pod (a RayService rollout removing the old cluster, a node drained, a pod
evicted) by running its preStop hook and then sending SIGTERM; a Ray node that dies takes its
replicas' streams with it. The hook (`python -m glmserve.serving.node_drain`, rendered by the
operator) uses Ray's own node drain, the call KubeRay's autoscaler makes before it deletes a pod:

- a worker node asks the GCS to drain it with a deadline. Serve's controller then migrates the
  replicas off it: it starts their replacements on other nodes and stops each old replica once its
  replacement runs, or at the deadline less its `graceful_shutdown_timeout_s` at the latest. A
  stopping replica leaves the running set at once (so no handle, proxy or glmserve router sends it
  new requests; an engine deregisters from the router) and finishes its in-flight requests; the
  node's Serve proxy fails its health check, so the Service stops sending it new connections.
- the head cannot be drained (the GCS refuses), and its controller must outlive the workers' drains:
  it waits while a draining node still runs Serve replicas (a rollout deletes every pod at once),
  after giving the workers' hooks a few seconds to ask for their drains.

Either way the hook returns when nothing is left to wait for, or at the deadline: SIGTERM follows.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

SERVE_REPLICA_CLASS = "ServeReplica:"
POLL_S = 1.0
# The head's hook starts with the workers' (a rollout deletes every pod at once): it gives their
# drain requests this long to reach the GCS before it reads which nodes drain.
HEAD_SETTLE_S = 10.0

log = logging.getLogger("glmserve.node_drain")


def wait_until_gone(replicas: Callable[[], int], deadline: float, clock: Callable[[], float] = time.monotonic) -> int:
    """Polls `replicas` until it reads 0 or `deadline` passes; the count left (0: all gone)."""
    while (left := replicas()) and clock() < deadline:
        time.sleep(min(POLL_S, max(0.0, deadline - clock())))
    return left


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m glmserve.serving.node_drain", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--deadline-s",
        type=int,
        required=True,
        help="seconds the pod has left (its terminationGracePeriodSeconds less a margin): replicas still "
        "draining then are stopped by SIGTERM",
    )
    parser.add_argument("--node-id", help="the Ray node to drain (hex); default: this pod's node")
    return parser


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.deadline_s <= 0:
        cli.error("--deadline-s must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import ray
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # compiled; its stub omits it
    from ray.core.generated import autoscaler_pb2
    from ray.util.state import list_actors

    deadline = time.monotonic() + args.deadline_s
    ray.init(address="auto", logging_level=logging.WARNING, log_to_driver=False)
    node = args.node_id or ray.get_runtime_context().get_node_id()
    gcs = GcsClient(address=ray.get_runtime_context().gcs_address)  # as `ray drain-node` does
    head = any(n["NodeID"] == node and n.get("Resources", {}).get("node:__internal_head__") for n in ray.nodes())
    if not head:
        accepted, why = gcs.drain_node(
            node,
            autoscaler_pb2.DRAIN_NODE_REASON_PREEMPTION,  # type: ignore[attr-defined]  # generated, no stubs
            "the pod is being deleted (preStop)",
            int((time.time() + args.deadline_s) * 1000),
        )
        if not accepted:
            log.warning("Ray refused to drain node %s: %s; its replicas are cut at SIGTERM", node, why)
            return 0

    def on_watched_nodes() -> int:
        nodes = {node} if not head else set(gcs.get_draining_nodes())
        if not nodes:
            return 0
        alive = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000, raise_on_missing_output=False)
        return sum(1 for a in alive if a.class_name.startswith(SERVE_REPLICA_CLASS) and a.node_id in nodes)

    log.info("draining %s node %s (at most %d s)", "head" if head else "worker", node, args.deadline_s)
    if head:
        time.sleep(min(HEAD_SETTLE_S, args.deadline_s))
    left = wait_until_gone(on_watched_nodes, deadline)
    if left:
        log.warning("%d Serve replica(s) still draining at the deadline: SIGTERM cuts them", left)
    else:
        log.info("no Serve replica left to wait for")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
