"""The replica a scale-down stops is the cheapest to lose: Ray Serve's own deployment scheduler (its
downscale path, as the controller calls it each loop) with glmserve's choice installed."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve._private.constants import SERVE_LOGGER_NAME
from ray.serve._private.deployment_scheduler import (
    DeploymentDownscaleRequest,
    DeploymentScheduler,
    SpreadDeploymentSchedulingPolicy,
)
from ray.serve._private.test_utils import MockClusterNodeInfoCache  # Ray's own double for its unit tests
from ray.serve.autoscaling_policy import PrometheusSample, PrometheusScalar, PrometheusVector

from glmserve.serving import scale_down
from glmserve.serving.autoscaling import POLICY, PoolPolicy, cost_queries, costs_of
from tests.serving.test_autoscaling import TARGETS, context

DECODE = DeploymentID("Decode:m", "glmserve")


@pytest.fixture
def original() -> Iterator[None]:
    """Serve's method as shipped (another test's policy may have installed glmserve's), and the
    method as it was after the test."""
    before = DeploymentScheduler._get_replicas_to_stop
    DeploymentScheduler._get_replicas_to_stop = getattr(before, "__wrapped__", before)  # type: ignore[method-assign]
    scale_down._costs.clear()
    yield
    DeploymentScheduler._get_replicas_to_stop = before  # type: ignore[method-assign]
    scale_down._costs.clear()


def scheduler(placement: dict[str, str]) -> DeploymentScheduler:
    """Serve's scheduler with `placement` (replica -> node) running, in that order (oldest first)."""
    nodes = MockClusterNodeInfoCache()
    for node in {"head", *placement.values()}:
        nodes.add_node(node)
    s = DeploymentScheduler(nodes, "head", create_placement_group_fn=lambda *a, **k: None)
    s.on_deployment_created(DECODE, SpreadDeploymentSchedulingPolicy())
    for replica, node in placement.items():
        s.on_replica_running(ReplicaID(replica, DECODE), node)
    return s


def stops(s: DeploymentScheduler, n: int) -> set[str]:
    chosen = s.schedule({}, {DECODE: DeploymentDownscaleRequest(DECODE, n)})[DECODE]
    return {r.unique_id for r in chosen}


@pytest.mark.usefixtures("original")
def test_serve_alone_stops_the_newest_glmserve_stops_the_cheapest() -> None:
    one_node = scheduler({"old": "n1", "mid": "n1", "new": "n1"})
    assert stops(one_node, 1) == {"new"}  # Serve's own choice, whatever the new replica runs
    scale_down.install()
    scale_down.install()  # a controller builds one policy per pool: one wrapper
    assert stops(one_node, 1) == {"new"}  # no costs published: Serve's choice stands
    # The newest runs 3 streams; the oldest none and few cached blocks: it goes.
    scale_down.publish(DECODE, {"old": (0, 10), "mid": (0, 500), "new": (3, 0)})
    assert stops(one_node, 1) == {"old"}
    assert stops(one_node, 2) == {"old", "mid"}
    # A replica whose cost is unknown (not registered with the router yet): Serve's choice stands.
    scale_down.publish(DECODE, {"old": (0, 10), "mid": (0, 500)})
    assert stops(one_node, 1) == {"new"}


@pytest.mark.usefixtures("original")
def test_a_swap_is_logged_where_serves_controller_logs() -> None:
    """Serve's controller configures its logger (handlers on it, no propagation) as below."""
    serve_logger = logging.getLogger(SERVE_LOGGER_NAME)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    before = serve_logger.handlers[:], serve_logger.propagate, serve_logger.level
    serve_logger.handlers[:] = [handler]
    serve_logger.propagate = False
    serve_logger.setLevel(logging.INFO)
    try:
        one_node = scheduler({"old": "n1", "new": "n1"})
        scale_down.install()
        scale_down.publish(DECODE, {"old": (0, 10), "new": (3, 0)})
        assert stops(one_node, 1) == {"old"}
    finally:
        serve_logger.handlers[:], serve_logger.propagate, serve_logger.level = before
    assert [r.getMessage() for r in records] == ["stopping ['old'] instead of ['new']: cheaper to lose"]


@pytest.mark.usefixtures("original")
def test_serves_choice_of_node_stands_only_the_replica_on_it_changes() -> None:
    # Serve frees the node with the fewest replicas (n2); on it, glmserve keeps the costlier one.
    two_nodes = scheduler({"a1": "n1", "a2": "n1", "a3": "n1", "b1": "n2", "b2": "n2"})
    assert stops(two_nodes, 1) == {"b2"}
    scale_down.install()
    scale_down.publish(DECODE, {"a1": (0, 0), "a2": (0, 0), "a3": (0, 0), "b1": (0, 0), "b2": (4, 100)})
    assert stops(two_nodes, 1) == {"b1"}  # not a1, the cheapest overall: Serve frees n2 first


def test_cheapest_keeps_replicas_not_running_and_serves_pick_among_equals() -> None:
    running = {"a": "n1", "b": "n1"}
    assert scale_down.cheapest({"starting", "b"}, running, {"a": (1, 0), "b": (1, 0)}) == {"starting", "b"}
    assert scale_down.cheapest({"b"}, running, {"a": (0, 9), "b": (1, 0)}) == {"a"}  # requests first


@pytest.mark.usefixtures("original")
def test_the_policy_publishes_each_replicas_cost_from_the_routers_gauges() -> None:
    requests_q, blocks_q = cost_queries("m", "decode")
    assert requests_q == 'max by (worker) (glmserve_router_worker_requests{model="m",role="decode"})'
    assert blocks_q == 'max by (worker) (glmserve_router_worker_cached_blocks{model="m",role="decode"})'

    def vector(**by_worker: float) -> PrometheusVector:
        return PrometheusVector(tuple(PrometheusSample({"worker": w}, v, 0.0) for w, v in by_worker.items()))

    assert costs_of(vector(a=2, b=0), vector(b=7)) == {"a": (2, 0), "b": (0, 7)}
    assert costs_of(vector(a=2), None) == {} and costs_of(PrometheusScalar(1, 0), vector()) == {}

    assert POLICY.endswith(PoolPolicy.__name__)
    policy = PoolPolicy(targets=TARGETS.wire(), model="m", pool="Decode")  # no address: no fetch thread
    assert DeploymentScheduler._get_replicas_to_stop.glmserve  # type: ignore[attr-defined]  # built: installed
    cache = policy._cache  # what Ray's fetch thread writes after each round of queries
    cache.results, cache.timestamp = {requests_q: vector(a=1), blocks_q: vector(a=3)}, time.monotonic()
    ctx = context(1, 1)
    policy(ctx)
    assert scale_down._costs[ctx.deployment_id] == {"a": (1, 3)}
