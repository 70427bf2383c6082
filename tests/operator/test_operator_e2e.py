"""The operator as a real kopf process against kmock (default) or a real cluster (`--kubeconfig`);
in-process, or started from its image with `--operator-image` (podman or buildah).

On kmock the tests also play the controllers that a real cluster runs (the kubelet's nodes and
pods, KubeRay's RayService status, garbage collection); on a real cluster those parts are skipped
or left to the cluster.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes.client.exceptions import ApiException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from glmserve.common.tenancy import hash_api_key
from glmserve.operator.build.inputs import ROUTER_METRICS_PORT
from glmserve.operator.crds import RESOURCES, build_crd
from glmserve.router.config import RouterConfig
from glmserve.router.flow.ticket import Ticket
from glmserve.router.router import Router
from glmserve.router.types import Load, WorkerInfo
from tests.operator.conftest import CLUSTER_TINY, VENDORED_CRDS, load_examples
from tests.operator.image import ImageOperator
from tests.operator.kube import Api, Cluster, KmockCluster, RealCluster, eventually, unique
from tests.operator.resources import G, fake_node, model_deployment, node_group
from tests.operator.test_chart import rbac_rules, render_chart

pytestmark = pytest.mark.slow

UPSTREAM_CRDS = [
    "ray.io_rayservices.yaml",
    "karpenter.sh_nodepools.yaml",
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
]
OPERATOR_ARGS = ["run", "--quiet", "--all-namespaces", "--standalone", "-m", "glmserve.operator.main"]
WATCHED = {"nodegroups", "modeldeployments", "plans", "tenants", "nodes", "rayservices", "deployments"}


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    crds = [build_crd(r) for r in RESOURCES]
    crds += [yaml.load((VENDORED_CRDS / f).read_text(), Loader=yaml.CSafeLoader) for f in UPSTREAM_CRDS]
    kubeconfig = request.config.getoption("--kubeconfig")
    live: KmockCluster | RealCluster = (
        RealCluster(Path(kubeconfig), crds) if kubeconfig else KmockCluster(crds, tmp_path_factory.mktemp("kmock"))
    )
    with live:
        yield live


@pytest.fixture(scope="module")
def operator(
    request: pytest.FixtureRequest, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KopfRunner | ImageOperator]:
    image = request.config.getoption("--operator-image")
    if image:
        log = tmp_path_factory.mktemp("operator") / "kopf.log"
        with ImageOperator(image, cluster.operator_kubeconfig, OPERATOR_ARGS, log) as running:
            if isinstance(cluster, KmockCluster):
                eventually(lambda: cluster.watching(WATCHED), what="kopf in the image to watch our resources")
            yield running
        print(running.output[-20000:])
        assert running.exit_code == 0
        return
    env = {"KUBECONFIG": str(cluster.operator_kubeconfig)}
    saved = {k: os.environ.get(k) for k in env}
    saved_location = kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    os.environ.update(env)
    # kopf logs in with the kubernetes client, which read KUBECONFIG when it was imported.
    kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = env["KUBECONFIG"]
    runner = KopfRunner(OPERATOR_ARGS, timeout=120)
    try:
        with runner:
            if isinstance(cluster, KmockCluster):
                eventually(lambda: cluster.watching(WATCHED), what="kopf to watch our resources")
            yield runner
    finally:
        kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved_location
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        print(runner.output[-20000:] if runner.future.done() else "operator output unavailable")
    assert runner.exit_code == 0


def status_of(api: Api, obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return (api.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace")) or {}).get("status") or {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def test_node_group_renders_its_node_pool_and_reports_its_nodes(
    cluster: Cluster, operator: KopfRunner | ImageOperator
) -> None:
    api = cluster.api
    name = unique("h100")
    group = node_group(name, "H100", 4)
    api.create(group)
    pool = eventually(lambda: api.get("karpenter.sh/v1", "NodePool", name), what="the NodePool")
    assert pool["spec"]["limits"] == {"nvidia.com/gpu": "32"}
    assert pool["spec"]["template"]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
    assert [(r["kind"], r["name"]) for r in pool["metadata"]["ownerReferences"]] == [("NodeGroup", name)]
    status = eventually(lambda: status_of(api, group).get("gpuMemoryGB") and status_of(api, group), what="status")
    assert (status["gpuMemoryGB"], status["gpuBandwidthTBps"], status["readyNodes"]) == (80, 3.35, 0)
    assert condition(status, "Ready")["status"] == "True"  # minNodes 0: nothing to wait for

    if cluster.emulated:  # the kubelets of two nodes, one of them ready
        api.create(fake_node(f"{name}-a", name, ready=True))
        api.create(fake_node(f"{name}-b", name, ready=False))
        # until the status has seen both nodes: the operator may report after the first one only
        status = eventually(lambda: status_of(api, group).get("nodes") == 2 and status_of(api, group))
        assert (status["readyNodes"], status["allocatableGpus"]) == (1, 8)

    api.patch(group, {"spec": {"maxNodes": 6}})
    eventually(
        lambda: api.get("karpenter.sh/v1", "NodePool", name)["spec"]["limits"] == {"nvidia.com/gpu": "48"},
        what="the NodePool to follow maxNodes",
    )
    api.delete(G, "NodeGroup", name)

    def pool_gone() -> bool:
        cluster.garbage_collect()
        return api.get("karpenter.sh/v1", "NodePool", name) is None

    eventually(pool_gone, what="the NodePool to be garbage-collected")


OWNED_CHILDREN = [
    ("ray.io/v1", "RayService", ""),
    ("apps/v1", "Deployment", "-router"),
    ("v1", "Service", "-router"),
    ("v1", "Service", "-ingress"),
    ("v1", "ConfigMap", "-router"),
    ("networking.k8s.io/v1", "NetworkPolicy", "-router"),
    ("policy/v1", "PodDisruptionBudget", "-router"),
    ("policy/v1", "PodDisruptionBudget", "-ingress"),
    ("policy/v1", "PodDisruptionBudget", "-prefill"),
    ("policy/v1", "PodDisruptionBudget", "-decode"),
    ("monitoring.coreos.com/v1", "ServiceMonitor", "-ingress"),
    ("monitoring.coreos.com/v1", "ServiceMonitor", "-router"),
    ("monitoring.coreos.com/v1", "PodMonitor", "-ray"),
    ("monitoring.coreos.com/v1", "PrometheusRule", ""),
    ("v1", "Secret", "-cache-salt"),
    ("v1", "Secret", "-ray-auth"),
    ("v1", "Secret", "-router-auth"),
]


def _secret(name: str, ns: str, key: str) -> dict[str, Any]:
    data = {"api-key": base64.b64encode(key.encode()).decode()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "data": data}


def _play_kuberay_and_kubelets(api: Api, name: str, ns: str, groups: list[str]) -> None:
    """What KubeRay, the kubelets and the Deployment controller would report once all is up."""
    for group in groups:
        api.create(fake_node(f"{group}-0", group, ready=True))
    for component in ("prefill", "decode"):
        api.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-{component}-0",
                    "namespace": ns,
                    "labels": {"glmserve.io/model-deployment": name, "glmserve.io/component": component},
                },
                "spec": {"containers": [{"name": "ray-worker", "image": "glmserve"}]},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            }
        )
    rayservice = api.get("ray.io/v1", "RayService", name, ns)
    assert rayservice is not None
    api.patch(rayservice, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, status=True)
    router = api.get("apps/v1", "Deployment", f"{name}-router", ns)
    assert router is not None
    api.patch(router, {"status": {"readyReplicas": 2, "replicas": 2}}, status=True)


def test_model_deployment_lifecycle(cluster: Cluster, operator: KopfRunner | ImageOperator) -> None:
    api = cluster.api
    h100, h200 = unique("h100"), unique("h200")
    api.create(node_group(h100, "H100", 2, "static"))
    api.create(node_group(h200, "H200", 3, "static"))
    with cluster.namespace("glm") as ns:
        key, new_key = "sk-acme-0123456789", "sk-acme-rotated-9876"
        api.create(_secret("acme-key", ns, key))
        for plan, rpm in (("free", 20), ("pro", 600)):
            api.create(
                {
                    "apiVersion": G,
                    "kind": "Plan",
                    "metadata": {"name": plan, "namespace": ns},
                    "spec": {"requestsPerMinute": rpm},
                }
            )
        tenant = {
            "apiVersion": G,
            "kind": "Tenant",
            "metadata": {"name": "acme", "namespace": ns},
            "spec": {"plan": "pro", "apiKeys": [{"secretRef": {"name": "acme-key"}}]},
        }
        api.create(tenant)
        deployment = model_deployment(
            "glm",
            ns,
            {
                "model": {"name": "glm-4.6", "precision": "fp8", "maxContext": 131072},
                "prefill": {"nodeGroup": h100, "replicas": 1, "maxConcurrency": 2},
                "decode": {"nodeGroup": h200, "autoscaling": {"minReplicas": 1, "maxReplicas": 2}},
                "ingress": {"replicas": 2, "tlsSecretName": "glm-tls"},
                "plans": ["pro"],
            },
        )
        api.create(deployment)

        for api_version, kind, suffix in OWNED_CHILDREN:
            child = eventually(
                lambda v=api_version, k=kind, s=suffix: api.get(v, k, f"glm{s}", ns), what=f"{kind} glm{suffix}"
            )
            assert [(r["kind"], r["name"]) for r in child["metadata"]["ownerReferences"]] == [
                ("ModelDeployment", "glm")
            ]
        status = eventually(lambda: status_of(api, deployment).get("plan") and status_of(api, deployment))
        assert condition(status, "Planned")["status"] == "True"
        assert status["phase"] == "Provisioning"
        assert status["endpoint"] == f"https://glm-ingress.{ns}.svc:8000/v1"
        assert status["plan"]["prefill"]["gpu"] == "H100"
        assert status["plan"]["decode"]["gpusPerReplica"] == 8
        assert condition(status, "Provisioned")["reason"] == "WaitingForNodes"

        config = api.get("v1", "ConfigMap", "glm-router", ns)["data"]["tenants.yaml"]
        assert hash_api_key(key) in config
        assert key not in config
        assert [p["name"] for p in yaml.safe_load(config)["plans"]] == ["pro"]
        eventually(lambda: condition(status_of(api, tenant), "Ready").get("status") == "True", what="tenant Ready")

        if cluster.emulated:
            _play_kuberay_and_kubelets(api, "glm", ns, [h100, h200])

            def ready_and_provisioned() -> dict[str, Any] | None:
                status = status_of(api, deployment)
                done = status.get("phase") == "Ready" and condition(status, "Provisioned").get("status") == "True"
                return status if done else None

            status = eventually(ready_and_provisioned, what="Ready and Provisioned")
            assert status["readyReplicas"] == {"prefill": 1, "decode": 1, "router": 2}
            assert condition(status, "Ready")["message"] == f"serving at https://glm-ingress.{ns}.svc:8000/v1"

        # One cache-salt secret for all ingress replicas, read from the Secret, made once.
        salt = api.get("v1", "Secret", "glm-cache-salt", ns)["data"]["secret"]
        assert len(base64.b64decode(salt)) == 64  # 32 random bytes, hex
        rayservice = api.get("ray.io/v1", "RayService", "glm", ns)["spec"]["rayClusterConfig"]
        ingress = next(g for g in rayservice["workerGroupSpecs"] if g["groupName"] == "ingress")
        env = {e["name"]: e for e in ingress["template"]["spec"]["containers"][0]["env"]}
        assert env["GLMSERVE_CACHE_SALT_SECRET"]["valueFrom"] == {
            "secretKeyRef": {"name": "glm-cache-salt", "key": "secret"}
        }
        # The Ray cluster's token, made once like the salt; KubeRay injects it from the named Secret.
        token = api.get("v1", "Secret", "glm-ray-auth", ns)["data"]["auth_token"]
        assert len(base64.b64decode(token)) == 64
        assert rayservice["authOptions"] == {"mode": "token", "secretName": "glm-ray-auth"}
        # The router's token, made once too: the router requires it, the ingress and engines send it.
        router_token = api.get("v1", "Secret", "glm-router-auth", ns)["data"]["token"]
        assert len(base64.b64decode(router_token)) == 64
        router_pod = api.get("apps/v1", "Deployment", "glm-router", ns)["spec"]["template"]["spec"]
        token_ref = {"secretKeyRef": {"name": "glm-router-auth", "key": "token"}}
        for container in [router_pod["containers"][0], ingress["template"]["spec"]["containers"][0]]:
            assert {e["name"]: e.get("valueFrom") for e in container["env"]}["GLMSERVE_ROUTER_TOKEN"] == token_ref

        # A spec change patches the children.
        api.patch(deployment, {"spec": {"decode": {"autoscaling": {"maxReplicas": 3}}, "ingress": {"replicas": 3}}})

        def rayservice_follows() -> bool:
            rayservice = api.get("ray.io/v1", "RayService", "glm", ns)
            groups = {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
            serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
            args = serve["applications"][0]["args"]
            return (
                groups["decode"]["maxReplicas"] == 3
                and groups["ingress"]["replicas"] == 3
                and args["deployment"]["ingress"]["replicas"] == 3
            )

        eventually(rayservice_follows, what="the RayService to follow the spec")
        assert api.get("v1", "Secret", "glm-cache-salt", ns)["data"]["secret"] == salt  # not re-made
        assert api.get("v1", "Secret", "glm-ray-auth", ns)["data"]["auth_token"] == token
        assert api.get("v1", "Secret", "glm-router-auth", ns)["data"]["token"] == router_token

        # Key rotation: a second key joins; the router's config holds both hashes, no key.
        api.create(_secret("acme-key-2", ns, new_key))
        api.patch(
            tenant, {"spec": {"apiKeys": [{"secretRef": {"name": "acme-key"}}, {"secretRef": {"name": "acme-key-2"}}]}}
        )
        eventually(
            lambda: hash_api_key(new_key) in api.get("v1", "ConfigMap", "glm-router", ns)["data"]["tenants.yaml"],
            what="the rotated key's hash in the router config",
        )

        api.delete(G, "ModelDeployment", "glm", ns)

        def children_gone() -> bool:
            cluster.garbage_collect()  # again and again, as the real one: a reconcile may have been in flight
            return all(api.get(v, k, f"glm{s}", ns) is None for v, k, s in OWNED_CHILDREN)

        eventually(children_gone, what="the children to be garbage-collected")
    api.delete(G, "NodeGroup", h100)
    api.delete(G, "NodeGroup", h200)


def test_infeasible_deployment_is_refused_until_capacity_allows(
    cluster: Cluster, operator: KopfRunner | ImageOperator
) -> None:
    api = cluster.api
    h100 = unique("h100")
    group = node_group(h100, "H100", 1, "static")
    api.create(group)
    with cluster.namespace("bf16") as ns:
        deployment = model_deployment(
            "glm",
            ns,
            {
                "model": {"name": "glm-4.6", "maxContext": 32768},
                "prefill": {"nodeGroup": h100},
                "decode": {"nodeGroup": h100},
            },
        )
        api.create(deployment)
        status = eventually(
            lambda: status_of(api, deployment).get("phase") == "Infeasible" and status_of(api, deployment)
        )
        planned = condition(status, "Planned")
        assert (planned["status"], planned["reason"]) == ("False", "Infeasible")
        assert planned["message"] == (
            f"node group {h100} allows at most 1 node(s) of 8 H100 but prefill 1 x 16 GPUs (2 node(s))"
            " + decode 1 x 16 GPUs (2 node(s)) need 4 node(s): short by 3 node(s) (24 H100 GPUs)"
        )
        assert "plan" not in status
        assert api.get("ray.io/v1", "RayService", "glm", ns) is None
        events = eventually(
            lambda: [
                e
                for e in api.list("v1", "Event", ns)
                if e["involvedObject"]["name"] == "glm" and e["reason"] == "Infeasible"
            ],
            what="a Warning event",
        )
        assert events[0]["type"] == "Warning"

        api.patch(group, {"spec": {"maxNodes": 4}})
        eventually(
            lambda: condition(status_of(api, deployment), "Planned").get("status") == "True",
            what="Planned once capacity allows",
        )
        assert api.get("ray.io/v1", "RayService", "glm", ns) is not None
    api.delete(G, "NodeGroup", h100)


def test_spec_errors_become_conditions_without_children(cluster: Cluster, operator: KopfRunner | ImageOperator) -> None:
    api = cluster.api
    with cluster.namespace("bad") as ns:
        missing = model_deployment(
            "nogroup",
            ns,
            {"model": {"name": "glm-4.6-fp8"}, "prefill": {"nodeGroup": "nowhere"}, "decode": {"nodeGroup": "nowhere"}},
        )
        api.create(missing)
        status = eventually(lambda: status_of(api, missing).get("phase") == "Pending" and status_of(api, missing))
        assert condition(status, "Planned")["message"] == "NodeGroup(s) nowhere not found"

        both = model_deployment(
            "both",
            ns,
            {
                "model": {"name": "glm-4.6-fp8"},
                "prefill": {"nodeGroup": "nowhere"},
                "decode": {"nodeGroup": "nowhere", "replicas": 1, "autoscaling": {"maxReplicas": 2}},
            },
        )
        if not cluster.emulated:  # a real API server evaluates the CRD's CEL rule at admission
            with pytest.raises(ApiException) as rejected:
                api.create(both)
            assert "set replicas or autoscaling, not both" in str(rejected.value.body)
            return
        api.create(both)  # kmock validates nothing: the operator has to refuse it
        status = eventually(lambda: status_of(api, both).get("phase") == "Invalid" and status_of(api, both))
        planned = condition(status, "Planned")
        assert planned["reason"] == "InvalidSpec"
        assert planned["message"] == "decode: set replicas or autoscaling, not both"
        assert api.get("ray.io/v1", "RayService", "both", ns) is None


def test_the_cpu_example_is_planned_and_rendered(cluster: Cluster, operator: KopfRunner) -> None:
    """examples/cluster-tiny through the operator: its CPU NodeGroup, its deployment planned on it
    and rendered with the Ray token Secret and GCS fault tolerance, its tenants' keys hashed."""
    api = cluster.api
    objs = load_examples(CLUSTER_TINY)
    group_name = unique("cpu-tiny")  # NodeGroups are cluster-scoped
    group = copy.deepcopy(objs["NodeGroup/cpu-tiny"])
    group["metadata"]["name"] = group_name
    api.create(group)
    ready = eventually(
        lambda: condition(status_of(api, group), "Ready").get("status") == "True" and status_of(api, group)
    )
    assert "gpuMemoryGB" not in ready and api.get("karpenter.sh/v1", "NodePool", group_name) is None  # static
    with cluster.namespace("tiny") as ns:
        deployment: dict[str, Any] = {}
        # Keys and plans first, so the deployment's first render admits both tenants.
        order = ["Secret", "Plan", "Tenant", "ModelDeployment"]
        for example in sorted((o for o in objs.values() if o["kind"] in order), key=lambda o: order.index(o["kind"])):
            obj = copy.deepcopy(example)
            obj["metadata"]["namespace"] = ns
            if obj["kind"] == "ModelDeployment":
                obj["spec"]["prefill"]["nodeGroup"] = obj["spec"]["decode"]["nodeGroup"] = group_name
                deployment = obj
            api.create(obj)
        status = eventually(lambda: status_of(api, deployment).get("plan") and status_of(api, deployment))
        assert condition(status, "Planned")["message"] == (
            f"prefill: 1 x CPU (1 node(s)) per replica on {group_name}; decode: 1 x CPU (1 node(s)) per replica"
            f" on {group_name}"
        )
        assert status["plan"]["decode"]["cpu"] == {"cores": 1, "kvCacheGiB": 0.25}
        cluster_config = api.get("ray.io/v1", "RayService", "tiny", ns)["spec"]["rayClusterConfig"]
        assert cluster_config["authOptions"] == {"mode": "token", "secretName": "tiny-ray-auth"}
        assert cluster_config["gcsFaultToleranceOptions"]["redisAddress"] == "gcs-redis.glmserve.svc:6379"
        workers = {g["groupName"]: g for g in cluster_config["workerGroupSpecs"]}
        assert workers["decode"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
            "cpu": "1",
            "memory": "3Gi",
        }
        assert len(base64.b64decode(api.get("v1", "Secret", "tiny-ray-auth", ns)["data"]["auth_token"])) == 64

        def tenants() -> dict[str, Any] | None:
            data = api.get("v1", "ConfigMap", "tiny-router", ns)["data"]
            config = yaml.safe_load(data.get("tenants.yaml", "tenants: []"))
            return config if len(config["tenants"]) == 2 else None

        config = eventually(tenants, what="both tenants in the router's config")
        assert {t["id"]: t["plan"] for t in config["tenants"]} == {"alice": "free", "bob": "pro"}
        assert config["tenants"][0]["apiKeys"] == [{"sha256": hash_api_key("sk-dev-alice-free")}]
        api.delete(G, "ModelDeployment", "tiny", ns)
    api.delete(G, "NodeGroup", group_name)


def test_router_shards_follow_the_spec(cluster: Cluster, operator: KopfRunner | ImageOperator) -> None:
    """shards: 2 renders each shard's Deployment, Service and budget, owned by the deployment, and
    the shards' address for the Ray pods; back to 1, the shards' objects go and the unsharded come back."""
    api = cluster.api
    h200 = unique("h200")
    api.create(node_group(h200, "H200", 4, "static"))
    with cluster.namespace("shards") as ns:
        pool = {"nodeGroup": h200, "replicas": 2}
        deployment = model_deployment(
            "glm", ns, {"model": {"name": "glm-4.6-fp8"}, "prefill": pool, "decode": pool, "router": {"shards": 2}}
        )
        api.create(deployment)
        kinds = [("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget")]
        for api_version, kind in kinds:
            for shard in ("glm-router-0", "glm-router-1"):
                child = eventually(lambda v=api_version, k=kind, n=shard: api.get(v, k, n, ns), what=f"{kind} {shard}")
                assert [r["name"] for r in child["metadata"]["ownerReferences"]] == ["glm"]
            assert api.get(api_version, kind, "glm-router", ns) is None

        def address() -> str | None:
            rayservice = api.get("ray.io/v1", "RayService", "glm", ns)
            if rayservice is None:
                return None
            head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
            return next(e["value"] for e in head["env"] if e["name"] == "GLMSERVE_ROUTER_ADDRESS")

        shards = f"glm-router-0.{ns}.svc:50051;glm-router-1.{ns}.svc:50051"
        eventually(lambda: address() == shards, what="the shards' address in the Ray pods")
        api.patch(api.get(G, "ModelDeployment", "glm", ns), {"spec": {"router": {"shards": 1}}})
        for api_version, kind in kinds:
            eventually(lambda v=api_version, k=kind: api.get(v, k, "glm-router", ns), what=f"{kind} glm-router")
            for shard in ("glm-router-0", "glm-router-1"):
                eventually(
                    lambda v=api_version, k=kind, n=shard: api.get(v, k, n, ns) is None, what=f"{kind} {shard} gone"
                )
        eventually(lambda: address() == f"glm-router.{ns}.svc:50051", what="the unsharded address")


# Grants no request of the tests above uses, each with why the operator holds it.
_CHANGED = "a changed ModelDeployment merge-patches its rendered children; the tests change only the RayService's"
UNUSED_GRANTS: dict[tuple[str, str, str], str] = {
    **{
        ("kopf.dev", "clusterkopfpeerings", verb): "leader election between the chart's operator replicas "
        "(--peering); the tests run one operator --standalone"
        for verb in ("get", "list", "watch", "patch")
    },
    ("", "services", "patch"): _CHANGED,
    ("apps", "deployments", "patch"): _CHANGED,
    ("policy", "poddisruptionbudgets", "patch"): _CHANGED,
    ("networking.k8s.io", "networkpolicies", "patch"): _CHANGED,
    ("monitoring.coreos.com", "servicemonitors", "patch"): _CHANGED,
    ("monitoring.coreos.com", "podmonitors", "patch"): _CHANGED,
    ("monitoring.coreos.com", "prometheusrules", "patch"): _CHANGED,
    ("", "services", "delete"): "replacing the router Service an older operator gave a virtual IP "
    "(clusterIP cannot change in place: glmserve.operator.cluster.IMMUTABLE)",
    ("apps", "deployments", "delete"): "replacing a Deployment whose selector changed (immutable)",
    ("karpenter.sh", "nodepools", "delete"): "a NodeGroup that turns static gives up its NodePool",
}


def _router_after_cold_starts(starts: dict[str, list[float]]) -> str:
    """A real router's /metrics after requests waited the given seconds for each model's decode pool,
    empty each time, to get its first replica."""
    clock = [1000.0]
    config = RouterConfig.model_validate({"flow": {"scale_from_zero": list(starts)}})
    router = Router(config, clock=lambda: clock[0])

    async def cold_starts() -> None:
        for model, waits in starts.items():
            for i, wait in enumerate(waits):
                ticket = Ticket(f"{model}-{i}", model, "t", 2, 1.0, 100.0)
                waiting = asyncio.create_task(router.flow.acquire(ticket))
                await asyncio.sleep(0.01)
                assert not waiting.done()  # the pool is empty: the request waits
                clock[0] += wait
                router.register(WorkerInfo("w0", "decode", model, address="w0:1", max_running_requests=2), Load())
                await asyncio.wait_for(waiting, 1)
                router.flow.release(ticket.request_id)
                router.deregister("w0")  # scaled back to zero

    asyncio.run(cold_starts())
    return generate_latest(router.metrics.registry).decode()


def test_cold_starts_reach_the_status_from_the_router_pods(cluster: Cluster, operator: KopfRunner) -> None:
    """A decode pool at minReplicas 0: the operator reads the router pods' metrics through the API
    server's pod proxy and shows the cold starts the router timed (kmock plays the pods' answers)."""
    if not isinstance(cluster, KmockCluster):
        pytest.skip("the router pods' answers are played on kmock only")
    api = cluster.api
    h100, h200 = unique("h100"), unique("h200")
    api.create(node_group(h100, "H100", 2, "static"))
    api.create(node_group(h200, "H200", 2, "static"))
    with cluster.namespace("zero") as ns:
        deployment = model_deployment(
            "zero",
            ns,
            {
                "model": {"name": "glm-4.6", "servedName": "glm", "precision": "fp8", "maxContext": 131072},
                "prefill": {"nodeGroup": h100, "replicas": 1},
                "decode": {"nodeGroup": h200, "autoscaling": {"minReplicas": 0, "maxReplicas": 2}},
            },
        )
        api.create(deployment)
        rayservice = eventually(lambda: api.get("ray.io/v1", "RayService", "zero", ns), what="the RayService")
        texts = {
            # Each router replica times the starts its own waiting requests saw: a timed two, b one.
            "zero-router-a": _router_after_cold_starts({"glm": [30.0, 42.0]}),
            "zero-router-b": _router_after_cold_starts({"glm": [7.5], "other": [1.0, 2.0, 3.0]}),
        }
        for pod, text in texts.items():
            cluster.serve_pod_proxy(ns, pod, ROUTER_METRICS_PORT, "/metrics", text, content_type=CONTENT_TYPE_LATEST)
            labels = {"glmserve.io/model-deployment": "zero", "glmserve.io/component": "router"}
            api.create(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod, "namespace": ns, "labels": labels},
                    "spec": {"containers": [{"name": "router", "image": "glmserve"}]},
                    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
                }
            )
        # What KubeRay writes when Serve's decode deployment has scaled: the operator reconciles.
        api.patch(rayservice, {"status": {"serviceStatus": "Running"}}, status=True)
        started = eventually(lambda: status_of(api, deployment).get("coldStarts"), what="cold starts in the status")
        assert started == {"count": 2, "lastSeconds": 42.0, "meanSeconds": 36.0, "routerPod": "zero-router-a"}
        api.delete(G, "ModelDeployment", "zero", ns)
        cluster.garbage_collect()
    api.delete(G, "NodeGroup", h100)
    api.delete(G, "NodeGroup", h200)


def test_rbac_grants_every_call_the_operator_made_and_says_why_it_grants_more(
    cluster: Cluster, operator: KopfRunner | ImageOperator
) -> None:
    """Runs last: the calls are those of every test above (kmock records each request with the
    operator's own credential). The chart's ClusterRole must grant them all, and whatever it grants
    beyond them is in UNUSED_GRANTS with its reason."""
    if not isinstance(cluster, KmockCluster):
        pytest.skip("requests are recorded on kmock only")
    made = cluster.operator_calls()
    assert ("ray.io", "rayservices", "create") in made, "run the whole module: this test checks the calls of the others"
    granted = {
        (group, resource, verb) for (group, resource), verbs in rbac_rules(render_chart()).items() for verb in verbs
    }
    assert sorted(made - granted) == []
    # Whether a patch happens depends on timing (an object changed while the operator looked), so
    # a listed grant may have been used; every unused one must be listed, and every listed one granted.
    assert sorted(granted - made - UNUSED_GRANTS.keys()) == []
    assert sorted(UNUSED_GRANTS.keys() - granted) == []
