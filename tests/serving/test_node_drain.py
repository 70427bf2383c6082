"""The Ray pods' preStop hook on a real multi-node Ray cluster (three raylets on this host): draining
a worker node lets its in-flight request finish there, moves its Serve replica to another node,
and returns once the node runs no replica, well before its deadline."""

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

pytestmark = pytest.mark.slow

POOL = "drain-test-pool"  # a resource only the worker nodes have: the replica never lands on the head
REQUEST_S = 12.0
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
    command = ["--deadline-s", str(DEADLINE_S), "--node-id", drained.node_id]
    hook = subprocess.run(
        [sys.executable, "-m", "glmserve.serving.node_drain", *command],
        env={**os.environ, "RAY_ADDRESS": cluster.address},
        capture_output=True,
        text=True,
        timeout=DEADLINE_S + 30,
        check=False,
    )
    took = time.monotonic() - started
    assert hook.returncode == 0, hook.stdout + hook.stderr
    assert "no Serve replica left to wait for" in hook.stderr, hook.stderr
    # The request ran to its end where it started; the hook waited for it, and no longer.
    assert in_flight.result(timeout_s=30) == drained.node_id
    assert REQUEST_S - 1 <= took < DEADLINE_S / 2, (took, hook.stderr)
    # New requests go to the replacement, on the other node.
    assert handle.remote(0).result(timeout_s=30) == spare.node_id
