"""The Ray pods' preStop hook on a real multi-node Ray cluster (three raylets on this host): draining
a worker node lets its in-flight request finish there, moves its Serve replica to another node,
and returns once the node runs no replica, well before its deadline; the head's hook, started with
it as in a rollout, waits for that too (past its own settling time)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster

from glmserve.serving.node_drain import HEAD_SETTLE_S

pytestmark = pytest.mark.slow

POOL = "drain-test-pool"  # a resource only the worker nodes have: the replica never lands on the head
REQUEST_S = 15.0  # longer than the head's settling time (HEAD_SETTLE_S)
DEADLINE_S = 120


@serve.deployment(
    ray_actor_options={"num_cpus": 0, "resources": {POOL: 0.01}},
    graceful_shutdown_timeout_s=60,
    graceful_shutdown_wait_loop_s=0.5,
)
class Sleeper:
    async def __call__(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return ray.get_runtime_context().get_node_id()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True})
    try:
        yield cluster
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def test_a_drained_worker_node_finishes_its_request_and_its_replica_moves(cluster: Cluster) -> None:
    drained = cluster.add_node(num_cpus=1, resources={POOL: 1})
    ray.init(address=cluster.address)
    serve.start(proxy_location="Disabled")
    handle = serve.run(Sleeper.bind(), name="drain", route_prefix=None)
    assert handle.remote(0).result(timeout_s=60) == drained.node_id
    spare = cluster.add_node(num_cpus=1, resources={POOL: 1})
    cluster.wait_for_nodes()

    in_flight = handle.remote(REQUEST_S)
    time.sleep(1)  # the request runs on the drained node
    started = time.monotonic()
    hooks = {
        node: subprocess.Popen(
            [sys.executable, "-m", "glmserve.serving.node_drain", "--deadline-s", str(DEADLINE_S), "--node-id", node],
            env={**os.environ, "RAY_ADDRESS": cluster.address},
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (cluster.head_node.node_id, drained.node_id)
    }
    took = {}
    for node, hook in hooks.items():
        _, stderr = hook.communicate(timeout=DEADLINE_S + 30)
        took[node] = time.monotonic() - started
        assert hook.returncode == 0, stderr
        assert "no Serve replica left to wait for" in stderr, stderr
    # The request ran to its end where it started; both hooks waited for it, and not to the deadline.
    assert in_flight.result(timeout_s=30) == drained.node_id
    assert HEAD_SETTLE_S < REQUEST_S - 1 <= min(took.values())
    assert max(took.values()) < DEADLINE_S / 2, took
    # New requests go to the replacement, on the other node.
    assert handle.remote(0).result(timeout_s=30) == spare.node_id
