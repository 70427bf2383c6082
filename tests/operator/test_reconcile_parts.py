"""The pure parts the reconcilers are made of: settings, tenancy, conditions, observations, Events."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from prometheus_client import generate_latest

from glmserve.common.deployment import ModelDeploymentSpec
from glmserve.common.deployment_status import ColdStarts
from glmserve.common.errors import ConfigError
from glmserve.common.resource import Condition
from glmserve.common.tenancy import PlanSpec, SecretKeyRef, TenantSpec, hash_api_key
from glmserve.operator.build.events import build_event
from glmserve.operator.build.services import build_ingress_service, build_router_services
from glmserve.operator.cluster import Cluster, contains, immutable_changes
from glmserve.operator.conditions import set_condition, transitions
from glmserve.operator.crds import RESOURCES, build_crd
from glmserve.operator.observe import cold_starts, group_nodes, node_summary, rayservice_ready, ready_replicas
from glmserve.operator.reconciler import Reconciler
from glmserve.operator.secrets import secret_reader
from glmserve.operator.settings import OperatorSettings
from glmserve.operator.tenancy import router_tenancy, tenant_status
from glmserve.router.metrics import RouterMetrics
from tests.operator.conftest import VENDORED_CRDS, example_inputs
from tests.operator.k8s_checks import builtin_problems
from tests.operator.kube import KmockCluster
from tests.operator.resources import model_deployment, node_group

KEYS = {("acme-key", "api-key"): "sk-acme\n", ("beta-key", "api-key"): "sk-beta"}


def read(ref: SecretKeyRef) -> str | None:
    return KEYS.get((ref.name, ref.key))


def tenant(plan: str, secret: str) -> TenantSpec:
    return TenantSpec.model_validate({"plan": plan, "apiKeys": [{"secretRef": {"name": secret}}]})


PLANS = {"free": PlanSpec(requestsPerMinute=10), "pro": PlanSpec(requestsPerMinute=600)}


def test_router_config_serves_the_allowed_plans_and_hashes_keys() -> None:
    tenants = {"acme": tenant("pro", "acme-key"), "beta": tenant("free", "beta-key"), "gone": tenant("pro", "nokey")}
    result = router_tenancy(PLANS, tenants, ["pro"], read)
    assert result.config is not None
    assert [p.name for p in result.config.plans] == ["pro"]
    assert [t.id for t in result.config.tenants] == ["acme"]  # beta's plan is served elsewhere
    assert result.config.tenants[0].api_keys[0].sha256 == hash_api_key("sk-acme")  # the newline is not the key's
    assert result.problems == {"gone": "Secret nokey has no key api-key (or it is empty)"}


def test_router_config_without_plans_admits_nobody() -> None:
    result = router_tenancy({}, {"acme": tenant("pro", "acme-key")}, [], read)
    assert result.config is None
    assert result.problems == {"acme": "plan pro not found (plans: none)"}


def test_tenant_status_says_what_to_fix() -> None:
    ok = tenant_status(
        "acme", tenant("pro", "acme-key").model_dump(by_alias=True), PLANS, read, conditions=[], generation=3
    )
    assert (ok.conditions[0].status, ok.conditions[0].reason, ok.observed_generation) == ("True", "Admitted", 3)
    bad = tenant_status("acme", {"plan": "pro", "apiKeys": []}, PLANS, read, conditions=[], generation=None)
    assert bad.conditions[0].reason == "InvalidSpec"
    assert "apiKeys: List should have at least 1 item" in bad.conditions[0].message


def test_settings_come_from_the_environment_and_fill_defaults() -> None:
    settings = OperatorSettings.from_env({"GLMSERVE_OPERATOR_INGRESS_REPLICAS": "4", "PATH": "/bin"})
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"name": "glm-4.6"},
            "prefill": {"nodeGroup": "a"},
            "decode": {"nodeGroup": "a"},
            "router": {"replicas": 5},
        }
    )
    done = settings.complete(spec)
    assert (done.router.replicas, done.ingress.replicas) == (5, 4)
    with pytest.raises(ConfigError, match="unknown operator settings GLMSERVE_OPERATOR_IMAGES; known: "):
        OperatorSettings.from_env({"GLMSERVE_OPERATOR_IMAGES": "x"})
    with pytest.raises(ConfigError, match="GLMSERVE_OPERATOR_REDIS_URL: String should match pattern"):
        OperatorSettings.from_env({"GLMSERVE_OPERATOR_REDIS_URL": "http://redis"})
    with pytest.raises(ConfigError, match=r"GLMSERVE_OPERATOR_RAY_VERSION: must be at least 2.52.0 \(Ray token"):
        OperatorSettings.from_env({"GLMSERVE_OPERATOR_RAY_VERSION": "2.51.9"})


def test_live_objects_with_server_defaults_still_match() -> None:
    desired = {"spec": {"ports": [{"name": "grpc", "port": 50051}]}}
    live = {"metadata": {"uid": "u"}, "spec": {"ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}]}}
    assert contains(live, desired)
    assert not contains(live, {"spec": {"ports": [{"name": "grpc", "port": 50052}]}})
    assert not contains(live, {"spec": {"ports": []}})


def test_only_changes_to_immutable_fields_call_for_a_replacement() -> None:
    headless = build_router_services(example_inputs())[0]
    with_vip = {**headless, "spec": {**headless["spec"], "clusterIP": "10.96.0.7"}}
    assert immutable_changes(with_vip, headless) == ["spec.clusterIP"]
    assert immutable_changes(headless, headless) == []
    ingress = build_ingress_service(example_inputs())  # sets no clusterIP: the server's stays
    assert immutable_changes({**ingress, "spec": {**ingress["spec"], "clusterIP": "10.96.0.8"}}, ingress) == []
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"selector": {"matchLabels": {"a": "1"}}}}
    moved = {**deployment, "spec": {"selector": {"matchLabels": {"a": "2"}}}}
    assert immutable_changes(deployment, moved) == ["spec.selector"]


def test_a_router_service_with_a_virtual_ip_is_replaced_by_a_headless_one(tmp_path: Path) -> None:
    """An operator before the headless router Service gave it a virtual IP, which the API server
    never lets change: apply replaces the Service instead of failing to reconcile for good."""
    headless = build_router_services(example_inputs())[0]
    meta = headless["metadata"]
    old = {**headless, "spec": {**headless["spec"], "clusterIP": "10.96.0.7"}}
    old["metadata"] = {**meta, "annotations": {"written-by": "the old operator"}}
    with KmockCluster([], tmp_path) as kmock_cluster:
        api = kmock_cluster.api
        api.create(old)
        client = kubernetes.config.new_client_from_config(config_file=str(kmock_cluster.kubeconfig))
        cluster = Cluster(client, str(tmp_path / "discovery.json"))
        assert cluster.apply(headless)
        live = api.get("v1", "Service", meta["name"], meta["namespace"])
        assert live["spec"]["clusterIP"] == "None"
        assert "written-by" not in (live["metadata"].get("annotations") or {})  # replaced, not patched
        assert not cluster.apply(headless)
        # Anything else still changes in place.
        api.patch(live, {"metadata": {"annotations": {"written-by": "someone"}}})
        ported = {**headless, "spec": {**headless["spec"], "ports": headless["spec"]["ports"][:1]}}
        assert cluster.apply(ported)
        live = api.get("v1", "Service", meta["name"], meta["namespace"])
        assert live["metadata"]["annotations"] == {"written-by": "someone"}
        assert [p["name"] for p in live["spec"]["ports"]] == ["grpc"]


def test_conditions_move_their_transition_time_only_on_change() -> None:
    first = set_condition([], "Ready", status=False, reason="NotReady", message="a", generation=1)
    first = [first[0].model_copy(update={"last_transition_time": "2026-01-01T00:00:00Z"})]
    same = set_condition(first, "Ready", status=False, reason="NotReady", message="b", generation=2)
    assert same[0].last_transition_time == "2026-01-01T00:00:00Z"
    flipped = set_condition(same, "Ready", status=True, reason="Ready", message="c", generation=2)
    assert flipped[0].last_transition_time != "2026-01-01T00:00:00Z"
    events = transitions(first, flipped)
    assert [(e.type, e.reason, e.message) for e in events] == [("Normal", "Ready", "Ready: c")]
    assert transitions(flipped, flipped) == []


def _condition(type_: str, status: str) -> dict[str, Any]:
    return {"type": type_, "status": status}


def test_readings_of_nodes_and_children() -> None:
    node = {
        "metadata": {"name": "n1", "labels": {"glmserve.io/node-group": "h100", "team": "a"}},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [_condition("Ready", "True")]},
    }
    summary = node_summary(node)
    assert summary == {"name": "n1", "labels": node["metadata"]["labels"], "ready": True, "gpus": 8}
    assert group_nodes([summary], {"glmserve.io/node-group": "h100", "team": "b"}) == []
    assert rayservice_ready(None) == (False, "the RayService does not exist yet")
    assert rayservice_ready({"status": {"conditions": [_condition("Ready", "True")]}})[0]
    waiting = {"status": {"activeServiceStatus": {"applicationStatuses": {"glmserve": {"status": "DEPLOYING"}}}}}
    assert rayservice_ready(waiting) == (False, "the Serve application is not running yet (glmserve: DEPLOYING)")
    plan = example_inputs().plan
    pods = [
        {
            "metadata": {"labels": {"glmserve.io/model-deployment": "glm-46", "glmserve.io/component": role}},
            "status": {"phase": "Running", "conditions": [_condition("Ready", ready)]},
        }
        for role, ready in (("decode", "True"), ("decode", "True"), ("decode", "True"), ("prefill", "False"))
    ]
    replicas = ready_replicas("glm-46", plan, pods, router_ready=1)
    assert (replicas.prefill, replicas.decode, replicas.router) == (0, 2, 1)  # decode is capped at its maximum


def test_events_are_valid_and_uniquely_named() -> None:
    involved = {"apiVersion": "glmserve.io/v1alpha1", "kind": "NodeGroup", "metadata": {"name": "h100", "uid": "u1"}}
    event = build_event(
        involved,
        type_="Warning",
        reason="Infeasible",
        message="short",
        time="2026-01-01T00:00:00Z",
        suffix="a1",
        instance="op-0",
    )
    assert builtin_problems(event) == []
    assert event["metadata"] == {"name": "h100.a1", "namespace": "default"}
    assert event["involvedObject"]["uid"] == "u1"


def test_secret_reader_decodes_and_tolerates_garbage() -> None:
    class FakeCluster:
        calls = 0

        def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
            FakeCluster.calls += 1
            data = {"ok": {"api-key": base64.b64encode(b"sk-1").decode()}, "bad": {"api-key": "%%%"}}
            return {"data": data[name]} if name in data else None

    reader = secret_reader(FakeCluster(), "ns")  # type: ignore[arg-type]
    assert reader(SecretKeyRef(name="ok")) == "sk-1"
    assert reader(SecretKeyRef(name="ok", key="other")) is None
    assert reader(SecretKeyRef(name="bad")) is None
    assert reader(SecretKeyRef(name="missing")) is None
    assert FakeCluster.calls == 3  # one read per Secret


def test_condition_model_matches_kubernetes_condition_syntax() -> None:
    with pytest.raises(ValueError, match="String should match pattern"):
        Condition(type="Ready", status="True", reason="not camel case", last_transition_time="t")


def test_triggers_queued_behind_a_waiting_reconciliation_fold_into_it() -> None:
    reconciler = Reconciler(cluster=None, settings=OperatorSettings())  # type: ignore[arg-type]
    key = ("ModelDeployment", "ns", "glm")
    holding, release = threading.Event(), threading.Event()
    ran: list[tuple[str, bool]] = []

    def trigger(name: str, must_run: bool = False) -> None:
        with reconciler._turn(key, must_run) as mine:
            ran.append((name, mine))
            if name == "running":
                holding.set()
                release.wait(10)

    threads = [threading.Thread(target=trigger, args=("running",))]
    threads[0].start()
    assert holding.wait(10)
    threads.append(threading.Thread(target=trigger, args=("queued",)))
    threads[1].start()
    while key not in reconciler._waiting:  # "queued" waits for its turn
        time.sleep(0.01)
    trigger("folded")  # returns at once: "queued" reads the object after this trigger anyway
    threads.append(threading.Thread(target=trigger, args=("must", True)))  # a change handler always runs
    threads[2].start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert ran[:2] == [("running", True), ("folded", False)]
    assert sorted(ran[2:]) == [("must", True), ("queued", True)]


def test_without_the_prometheus_operator_monitors_are_skipped_not_fatal(tmp_path: Path) -> None:
    """A cluster without monitoring.coreos.com still gets its deployment (kmock, no kopf needed)."""

    crds = [build_crd(r) for r in RESOURCES]
    crds.append(yaml.load((VENDORED_CRDS / "ray.io_rayservices.yaml").read_text(), Loader=yaml.CSafeLoader))
    with KmockCluster(crds, tmp_path) as kmock_cluster:
        api = kmock_cluster.api
        api.create(node_group("h200", "H200", 2, "static"))
        spec = {"model": {"name": "glm-4.6-fp8"}, "prefill": {"nodeGroup": "h200"}, "decode": {"nodeGroup": "h200"}}
        api.create(model_deployment("glm", "ns", spec))
        client = kubernetes.config.new_client_from_config(config_file=str(kmock_cluster.kubeconfig))
        Reconciler(Cluster(client, str(tmp_path / "discovery.json")), OperatorSettings()).deployment("ns", "glm")
        assert api.get("ray.io/v1", "RayService", "glm", "ns") is not None
        status = api.get("glmserve.io/v1alpha1", "ModelDeployment", "glm", "ns")["status"]
        [ready] = [c for c in status["conditions"] if c["type"] == "Ready"]
        assert ready["message"].endswith(
            "(not rendered, this cluster does not serve: PodMonitor, PrometheusRule, ServiceMonitor)"
        )
        events = [e for e in api.list("v1", "Event", "ns") if e["involvedObject"]["name"] == "glm"]
        assert {e["reason"] for e in events} >= {"Planned", "WaitingForNodes", "NotReady"}


def test_router_shards_are_created_and_the_dropped_ones_deleted(tmp_path: Path) -> None:
    """Per-shard Deployments, Services and budgets follow spec.router.shards: 3 -> 2 deletes the
    third shard's, 2 -> 1 brings back the unsharded names; the ConfigMap and policy stay."""
    crds = [build_crd(r) for r in RESOURCES]
    crds.append(yaml.load((VENDORED_CRDS / "ray.io_rayservices.yaml").read_text(), Loader=yaml.CSafeLoader))
    kinds = [("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget")]
    with KmockCluster(crds, tmp_path) as kmock_cluster:
        api = kmock_cluster.api
        api.create(node_group("h200", "H200", 16, "static"))
        pool = {"nodeGroup": "h200", "replicas": 3}
        spec = {"model": {"name": "glm-4.6-fp8"}, "prefill": pool, "decode": pool, "router": {"shards": 3}}
        api.create(model_deployment("glm", "ns", spec))
        client = kubernetes.config.new_client_from_config(config_file=str(kmock_cluster.kubeconfig))
        reconciler = Reconciler(Cluster(client, str(tmp_path / "discovery.json")), OperatorSettings())

        def routers() -> dict[str, list[str]]:
            return {
                kind: sorted(
                    o["metadata"]["name"]
                    for o in api.list(version, kind, "ns")
                    if o["metadata"]["labels"].get("glmserve.io/component") == "router"
                )
                for version, kind in kinds
            }

        shards = {kind: ["glm-router-0", "glm-router-1", "glm-router-2"] for _, kind in kinds}
        reconciler.deployment("ns", "glm")
        assert routers() == shards
        configmap = api.get("v1", "ConfigMap", "glm-router", "ns")
        assert sorted(configmap["data"]) == ["config-0.yaml", "config-1.yaml", "config-2.yaml"]
        for count, names in ((2, {k: v[:2] for k, v in shards.items()}), (1, {k: ["glm-router"] for _, k in kinds})):
            live = api.get("glmserve.io/v1alpha1", "ModelDeployment", "glm", "ns")
            api.patch(live, {"spec": {"router": {"shards": count}}})
            reconciler.deployment("ns", "glm")
            assert routers() == names
        assert api.get("networking.k8s.io/v1", "NetworkPolicy", "glm-router", "ns") is not None
        env = api.get("ray.io/v1", "RayService", "glm", "ns")["spec"]["rayClusterConfig"]["headGroupSpec"]
        addresses = [
            e["value"]
            for e in env["template"]["spec"]["containers"][0]["env"]
            if e["name"] == "GLMSERVE_ROUTER_ADDRESS"
        ]
        assert addresses == ["glm-router.ns.svc:50051"]


def test_cold_starts_come_from_the_router_that_timed_most_and_ignore_what_is_not_an_exposition() -> None:
    def exposition(model: str, starts: list[float]) -> str:
        metrics = RouterMetrics()
        for seconds in starts:
            metrics.cold_start.labels(model).observe(seconds)
            metrics.last_cold_start.labels(model).set(seconds)
        return generate_latest(metrics.registry).decode()

    texts = {
        "r-a": exposition("glm", [10.0]),
        "r-b": exposition("glm", [20.0, 40.0]),
        "r-c": exposition("other", [1.0, 2.0, 3.0]),
        "r-d": "<html>502 Bad Gateway</html>",
    }
    assert cold_starts(texts, "glm") == ColdStarts(count=2, last_seconds=40.0, mean_seconds=30.0, router_pod="r-b")
    assert cold_starts({"r-a": exposition("glm", [])}, "glm") is None
