"""What a restarted Serve controller asks every live replica before it recovers it (after the Ray head
returns, docs/node-loss.md): `is_allocated()`. A replica that fails it is stopped and replaced, so every
replica of the RayService, vLLM engines included, must answer it."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from tests.cluster.conftest import RunningCluster

pytestmark = pytest.mark.slow

# Run on the head host (as `kubectl exec` would): a Ray driver calling each replica actor as the
# controller does (ray/serve/_private/deployment_state.py, ActorReplicaWrapper.recover).
ASK = textwrap.dedent(
    """
    import json, sys, ray
    ray.init(address=sys.argv[1], namespace="serve", logging_level="ERROR")
    answers = {}
    for name in json.loads(sys.argv[2]):
        try:
            ray.get(ray.get_actor(name, namespace="serve").is_allocated.remote(), timeout=60)
            answers[name] = "ok"
        except Exception as exc:
            answers[name] = f"{type(exc).__name__}: {exc}"[-300:]
    print(json.dumps(answers))
    """
)


def test_every_replica_answers_the_recovering_controllers_probe(tiny_cluster: RunningCluster) -> None:
    (head,) = tiny_cluster.hosts(role="head")
    replicas = tiny_cluster.replicas()
    deployments = {d.split(":")[0] for d in replicas.values()}
    assert {"Prefill", "Decode"} <= deployments, replicas
    names = json.dumps(sorted(replicas))
    asked = tiny_cluster.exec(head["name"], sys.executable, "-c", ASK, f"{head['ip']}:6379", names)
    answers = json.loads(asked.stdout.strip().splitlines()[-1])
    assert answers == dict.fromkeys(replicas, "ok"), answers
