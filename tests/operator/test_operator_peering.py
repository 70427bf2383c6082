"""Leader election: with kopf peering, a replica that sees a higher-priority peer does nothing
until that peer is gone (kmock only: a real cluster's peers are real operators)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import kubernetes
import pytest
import yaml
from kopf.testing import KopfRunner

from glmserve.operator.crds import RESOURCES, build_crd
from tests.operator.conftest import REPO_ROOT, VENDORED_CRDS
from tests.operator.kube import KmockCluster, eventually, unique
from tests.operator.resources import node_group

pytestmark = pytest.mark.slow
PEERING = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "glmserve"}}
LEADER = "other-replica@elsewhere"


@pytest.fixture
def kmock_only(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KmockCluster]:
    if request.config.getoption("--kubeconfig"):
        pytest.skip("peering is tested against kmock, where the test can play the other replica")
    crds = [build_crd(r) for r in RESOURCES]
    crds.append(yaml.safe_load((REPO_ROOT / "charts/glmserve/crds/clusterkopfpeerings.kopf.dev.yaml").read_text()))
    crds.append(yaml.load((VENDORED_CRDS / "karpenter.sh_nodepools.yaml").read_text(), Loader=yaml.CSafeLoader))
    with KmockCluster(crds, tmp_path) as cluster:
        yield cluster


def test_a_replica_waits_for_a_higher_priority_peer(kmock_only: KmockCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    api = kmock_only.api
    leader = {"priority": 40000, "lifetime": 600, "lastseen": datetime.now(UTC).isoformat()}
    api.create({**PEERING, "status": {LEADER: leader}})
    monkeypatch.setenv("KUBECONFIG", str(kmock_only.kubeconfig))
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", os.environ["KUBECONFIG"])
    args = ["run", "--quiet", "--all-namespaces", "--peering=glmserve", "-m", "glmserve.operator.main"]
    with KopfRunner(args, timeout=120):

        def joined() -> dict[str, dict[str, object]] | None:
            peers = (api.get("kopf.dev/v1", "ClusterKopfPeering", "glmserve") or {}).get("status") or {}
            return {k: v for k, v in peers.items() if k != LEADER} or None

        ours = eventually(joined, what="the operator to join the peering")
        [priority] = [peer["priority"] for peer in ours.values()]
        assert 1 <= int(priority) <= 32767  # drawn at start-up, below the leader's
        name = unique("paused")
        api.create(node_group(name, "H100", 1))
        time.sleep(3)  # a working operator renders the NodePool well within this
        assert api.get("karpenter.sh/v1", "NodePool", name) is None

        api.patch(PEERING, {"status": {LEADER: None}})  # the leader leaves
        eventually(lambda: api.get("karpenter.sh/v1", "NodePool", name), what="the NodePool once it leads")
