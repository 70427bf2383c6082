"""Every manifest the pure builders render is what Kubernetes 1.34 and the upstream CRDs accept."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from glmserve import __version__
from glmserve.common.deployment import Images, ModelDeploymentSpec
from glmserve.common.deployment_plan import ServeAppArgs
from glmserve.common.nodegroup import NodeGroupSpec
from glmserve.common.tenancy import Plan, Tenant, TenantsFile, hash_api_key
from glmserve.operator.build.children import build_children
from glmserve.operator.build.inputs import SHARD_LABEL
from glmserve.operator.build.meta import COMPONENT_LABEL, Owner
from glmserve.operator.build.nodepool import build_nodepool
from glmserve.operator.build.random_secrets import SALT_KEY, build_cache_salt_secret
from glmserve.operator.build.rayservice import build_rayservice
from glmserve.operator.build.router import CONFIG_FILE, CONFIG_HASH, TENANTS_FILE
from glmserve.operator.settings import OperatorSettings
from glmserve.router.config import load_config
from glmserve.router.replicas import RouterShards, connect, router_replicas
from glmserve.serving import node_drain
from glmserve.serving.entrypoint import model_source, topology_spec
from glmserve.serving.topology import plan
from tests.operator.conftest import example_inputs, load_examples, planned_inputs, sharded_inputs
from tests.operator.k8s_checks import CustomResourceSchemas, builtin_problems, manifest_problems

KEY = "sk-live-0123456789abcdef"
TENANCY = TenantsFile(
    plans=[Plan(name="pro", requestsPerMinute=600)],
    tenants=[Tenant(id="acme", plan="pro", apiKeys=[{"sha256": hash_api_key(KEY)}])],
)


def _children(tls: bool) -> list[dict[str, Any]]:
    return build_children(example_inputs(tls=tls), TENANCY, "redis://glmserve-redis:6379/0")


@pytest.mark.parametrize("tls", [True, False], ids=["https", "http"])
def test_every_child_validates_strictly(schemas: CustomResourceSchemas, tls: bool) -> None:
    children = _children(tls)
    kinds = sorted({c["kind"] for c in children})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PodMonitor",
        "PrometheusRule",
        "RayService",
        "Service",
        "ServiceMonitor",
    ]
    assert [p for child in children for p in manifest_problems(child, schemas)] == []


def test_the_cache_salt_secret_validates_strictly_and_carries_the_given_secret(schemas: CustomResourceSchemas) -> None:
    inputs = example_inputs()
    secret = build_cache_salt_secret(inputs, "ab" * 32)
    assert manifest_problems(secret, schemas) == []
    assert base64.b64decode(secret["data"][SALT_KEY]).decode() == "ab" * 32
    assert secret["metadata"]["ownerReferences"][0]["name"] == inputs.name
    env = _env(_ingress_pod(build_children(inputs, TENANCY, None))["containers"][0])
    assert env["GLMSERVE_CACHE_SALT_SECRET"] == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": SALT_KEY}}


def test_node_pools_validate_strictly(schemas: CustomResourceSchemas) -> None:
    for obj in load_examples().values():
        if obj["kind"] == "NodeGroup":
            name = obj["metadata"]["name"]
            pool = build_nodepool(name, NodeGroupSpec.model_validate(obj["spec"]), Owner("NodeGroup", name, "uid-1"))
            assert manifest_problems(pool, schemas) == []


def test_the_checks_can_fail(schemas: CustomResourceSchemas) -> None:
    """The validators above reject what the API server would: unknown fields, upstream CEL rules."""
    obj = load_examples()["NodeGroup/h100"]
    pool = build_nodepool("h100", NodeGroupSpec.model_validate(obj["spec"]), Owner("NodeGroup", "h100", "uid-1"))
    pool["spec"]["template"]["metadata"]["labels"]["karpenter.sh/team"] = "x"
    assert any('label domain "karpenter.sh" is restricted' in p for p in manifest_problems(pool, schemas))
    rayservice = build_rayservice(example_inputs(), None)
    rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["replicas"] = 1
    assert any("'replicas' was unexpected" in p for p in manifest_problems(rayservice, schemas))
    service = next(c for c in _children(True) if c["kind"] == "Service")
    service["spec"]["ports"][0]["port"] = "eight thousand"
    assert manifest_problems(service, schemas)


def test_static_node_groups_get_no_node_pool() -> None:
    spec = NodeGroupSpec.model_validate({"gpu": "H200", "maxNodes": 2, "provisioner": "static"})
    with pytest.raises(ValueError, match="only karpenter groups get a NodePool"):
        build_nodepool("lab", spec, Owner("NodeGroup", "lab", "uid-1"))


def test_fixed_fleet_becomes_a_static_node_pool() -> None:
    obj = load_examples()["NodeGroup/h200"]
    pool = build_nodepool("h200", NodeGroupSpec.model_validate(obj["spec"]), Owner("NodeGroup", "h200", "uid-1"))
    assert pool["spec"]["replicas"] == 3
    assert pool["spec"]["limits"] == {"nodes": "3"}
    dynamic = build_nodepool(
        "h100", NodeGroupSpec.model_validate(load_examples()["NodeGroup/h100"]["spec"]), Owner("NodeGroup", "h", "u")
    )
    assert "replicas" not in dynamic["spec"]
    assert dynamic["spec"]["limits"] == {"nvidia.com/gpu": "32"}
    assert dynamic["spec"]["template"]["metadata"]["labels"] == {
        "glmserve.io/node-group": "h100",
        "example.com/team": "inference",
    }


def test_a_karpenter_cpu_group_is_limited_by_cores(schemas: CustomResourceSchemas) -> None:
    spec = NodeGroupSpec.model_validate(
        {
            "cpu": {"cores": 8, "memoryGiB": 32, "enginesPerNode": 2},
            "maxNodes": 3,
            "nodeClassRef": {"name": "cpu"},
            "instanceTypes": ["m7i.2xlarge"],
        }
    )
    pool = build_nodepool("cpu", spec, Owner("NodeGroup", "cpu", "uid-1"))
    assert manifest_problems(pool, schemas) == []
    assert pool["spec"]["limits"] == {"cpu": "24"}


def test_ray_pod_templates_validate_as_pod_templates() -> None:
    cluster = build_rayservice(example_inputs(), None)["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for i, template in enumerate(templates):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}"}, "template": template}
        assert builtin_problems(wrapped) == []


def test_every_ray_pod_drains_its_node_before_it_stops(schemas: CustomResourceSchemas) -> None:
    """A pod deleted in a rollout runs node_drain before SIGTERM: the hook's deadline covers the
    longest drain Serve gives a replica the app builds (engines and ingress), and the grace period
    the hook plus Ray's stop, so neither Kubernetes nor the hook cuts a stream Serve would finish."""
    inputs = example_inputs()
    rayservice = build_rayservice(inputs, None)
    assert manifest_problems(rayservice, schemas) == []
    cluster = rayservice["spec"]["rayClusterConfig"]
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    args = ServeAppArgs.model_validate(config["applications"][0]["args"])
    topology = plan(topology_spec(args.deployment, args.planner, inputs.router_address))
    drains = [e.llm_config.deployment_config["graceful_shutdown_timeout_s"] for e in topology.engines.values()]
    longest = max([*drains, topology.ingress_options["graceful_shutdown_timeout_s"]])
    groups = {"head": cluster["headGroupSpec"]} | {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert list(groups) == ["head", "ingress", "prefill", "decode"]
    for group in groups.values():
        pod = group["template"]["spec"]
        [container] = pod["containers"]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[:3] == ["python", "-m", node_drain.__name__]
        deadline = node_drain.parser().parse_args(command[3:]).deadline_s
        assert longest < deadline < pod["terminationGracePeriodSeconds"]


def test_gpu_workers_are_pinned_to_their_node_groups() -> None:
    inputs = example_inputs()
    groups = {g["groupName"]: g for g in build_rayservice(inputs, None)["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert list(groups) == ["ingress", "prefill", "decode"]
    prefill, decode = groups["prefill"], groups["decode"]
    assert prefill["template"]["spec"]["nodeSelector"] == {
        "glmserve.io/node-group": "h100",
        "example.com/team": "inference",
    }
    assert decode["template"]["spec"]["nodeSelector"] == {"glmserve.io/node-group": "h200"}
    for group in (prefill, decode):
        pod = group["template"]["spec"]
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        container = pod["containers"][0]
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
        assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}} in pod["volumes"]
        assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert prefill["resources"] == {"glmserve-node-group-h100": "8", "glmserve-pool-prefill": "8"}
    assert decode["resources"] == {"glmserve-node-group-h200": "8", "glmserve-pool-decode": "8"}
    # Decode autoscales 1..2 replicas of one 8-GPU node each.
    assert (decode["replicas"], decode["minReplicas"], decode["maxReplicas"]) == (1, 1, 2)
    assert (prefill["minReplicas"], prefill["maxReplicas"]) == (1, 1)
    assert groups["ingress"]["replicas"] == inputs.spec.ingress.replicas
    assert "nvidia.com/gpu" not in json.dumps(groups["ingress"]["template"])


def test_serve_config_is_what_ray_serve_and_the_app_builder_accept() -> None:
    from ray.serve.schema import ServeDeploySchema

    inputs = example_inputs()
    config = yaml.safe_load(build_rayservice(inputs, None)["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    assert config["http_options"]["ssl_certfile"] == "/etc/glmserve/tls/tls.crt"
    [app] = config["applications"]
    assert app["import_path"] == "glmserve.serving.entrypoint:app_builder"
    args = ServeAppArgs.model_validate(app["args"])
    assert args.deployment == inputs.spec
    assert args.planner == inputs.plan
    assert app["args"]["deployment"]["ingress"]["replicas"] == 2
    assert app["args"]["planner"]["decode"]["parallelism"] == {"tensor": 8, "data": 1, "expert": 1}


def test_tls_secret_is_mounted_in_every_ray_pod_only_with_tls() -> None:
    for tls in (True, False):
        cluster = build_rayservice(example_inputs(tls=tls), None)["spec"]["rayClusterConfig"]
        pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
        mounted = [any(v["name"] == "tls" for v in p["spec"].get("volumes", [])) for p in pods]
        assert mounted == [tls] * 4


def test_every_ray_pod_finds_every_router_pod() -> None:
    """The router's Service is headless, so its name resolves to each router pod: every engine
    registers with all of them (router_replicas), not with the one a virtual IP would pick."""
    inputs = example_inputs()
    service = next(c for c in _children(True) if c["kind"] == "Service" and c["metadata"]["name"].endswith("-router"))
    assert service["spec"]["clusterIP"] == "None"
    cluster = build_rayservice(inputs, None)["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"]: e.get("value") for c in pod["spec"]["containers"] for e in c.get("env", [])}
        assert env["GLMSERVE_ROUTER_ADDRESS"] == f"{service['metadata']['name']}.{inputs.namespace}.svc:50051"


def test_router_config_holds_hashes_only() -> None:
    children = _children(True)
    assert KEY not in json.dumps(children)
    configmap = next(c for c in children if c["kind"] == "ConfigMap")
    config = TenantsFile.model_validate(yaml.safe_load(configmap["data"][TENANTS_FILE]))
    assert config.tenants[0].api_keys[0].sha256 == hash_api_key(KEY)
    deployment = next(c for c in children if c["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert [*container["command"], *container["args"]] == [
        "glmserve",
        "router",
        "serve",
        "--config",
        "/etc/glmserve/router/config.yaml",
    ]
    assert container["ports"][0] == {"name": "grpc", "containerPort": 50051}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    """Each variable's value, or its `valueFrom` reference."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _ingress_pod(children: list[dict[str, Any]]) -> dict[str, Any]:
    cluster = next(c for c in children if c["kind"] == "RayService")["spec"]["rayClusterConfig"]
    return next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "ingress")["template"]["spec"]


def test_the_router_and_the_engines_hash_blocks_alike(tmp_path: Path) -> None:
    """The router's own config loads, names the ports it serves on and the engines' hash seed."""
    children = _children(False)
    configmap = next(c for c in children if c["kind"] == "ConfigMap")
    (tmp_path / CONFIG_FILE).write_text(configmap["data"][CONFIG_FILE])
    config = load_config(tmp_path / CONFIG_FILE)
    router = next(c for c in children if c["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in router["ports"]} == {config.port, config.metrics_port}
    cluster = next(c for c in children if c["kind"] == "RayService")["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    seeds = {_env(g["template"]["spec"]["containers"][0])["PYTHONHASHSEED"] for g in groups}
    assert seeds == {config.hashing.seed}


def test_the_router_admits_from_its_mounted_tenants_with_limits_in_redis(tmp_path: Path) -> None:
    children = _children(False)
    configmap = next(c for c in children if c["kind"] == "ConfigMap")
    (tmp_path / CONFIG_FILE).write_text(configmap["data"][CONFIG_FILE])
    admission = load_config(tmp_path / CONFIG_FILE).admission
    assert admission.redis_url == "redis://glmserve-redis:6379/0"
    pod = next(c for c in children if c["kind"] == "Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"] == {"name": configmap["metadata"]["name"]}  # every key, the tenants file included
    assert admission.tenants_file == Path(mount["mountPath"]) / TENANTS_FILE
    assert TENANTS_FILE in configmap["data"]


def test_each_router_replica_hands_out_its_share_of_the_engines(tmp_path: Path) -> None:
    children = _children(False)
    configmap = next(c for c in children if c["kind"] == "ConfigMap")
    (tmp_path / CONFIG_FILE).write_text(configmap["data"][CONFIG_FILE])
    deployment = next(c for c in children if c["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] > 1
    assert load_config(tmp_path / CONFIG_FILE).flow.replicas == deployment["spec"]["replicas"]


def test_the_ingress_reads_the_tenants_and_shares_limits_in_redis() -> None:
    children = _children(False)
    ingress = _ingress_pod(children)
    env = _env(ingress["containers"][0])
    assert env["GLMSERVE_REDIS_URL"] == "redis://glmserve-redis:6379/0"
    mount = ingress["containers"][0]["volumeMounts"][0]
    volume = next(v for v in ingress["volumes"] if v["name"] == mount["name"])
    assert env["GLMSERVE_TENANTS_FILE"] == f"{mount['mountPath']}/{TENANTS_FILE}"
    assert volume["configMap"]["name"] == next(c for c in children if c["kind"] == "ConfigMap")["metadata"]["name"]
    assert volume["configMap"]["items"] == [{"key": TENANTS_FILE, "path": TENANTS_FILE}]


def test_new_tenants_roll_neither_the_router_nor_the_ray_cluster() -> None:
    """The ingress re-reads its mounted tenants file; restarting GPU pods for a new key would be absurd."""
    inputs = example_inputs()
    other = TenantsFile(plans=[Plan(name="pro", requestsPerMinute=1)])
    before = build_children(inputs, TENANCY, None)
    after = build_children(inputs, other, None)
    assert before[0]["data"][TENANTS_FILE] != after[0]["data"][TENANTS_FILE]

    def rolled(children: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        deployment = next(c for c in children if c["kind"] == "Deployment")
        rayservice = next(c for c in children if c["kind"] == "RayService")
        return deployment["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH], rayservice["spec"]

    assert rolled(before) == rolled(after)


def test_without_a_plan_there_is_no_tenants_file() -> None:
    configmap = build_children(example_inputs(), None, None)[0]
    assert set(configmap["data"]) == {CONFIG_FILE}


def test_pvc_weights_are_mounted_where_the_engines_and_the_ingress_load_them(schemas: CustomResourceSchemas) -> None:
    inputs = example_inputs()
    model = inputs.spec.model.model_copy(update={"source": "pvc://glm-weights/glm-4.6-fp8"})
    inputs = replace(inputs, spec=inputs.spec.model_copy(update={"model": model}))
    rayservice = build_rayservice(inputs, None)
    assert manifest_problems(rayservice, schemas) == []
    cluster = rayservice["spec"]["rayClusterConfig"]
    args = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]
    source = model_source(ServeAppArgs.model_validate(args).deployment.model.resolve().source)
    for group in cluster["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "weights"]
        [volume] = [v for v in pod["volumes"] if v["name"] == "weights"]
        assert volume["persistentVolumeClaim"] == {"claimName": "glm-weights", "readOnly": True}
        assert source.startswith(mount["mountPath"] + "/") and mount["readOnly"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert all(v["name"] != "weights" for v in head.get("volumes", []))


def test_ray_pods_and_router_pods_pull_their_own_images_with_the_pull_secrets(schemas: CustomResourceSchemas) -> None:
    settings = OperatorSettings(registry="mirror.example/ai", image_pull_secrets=("mirror",))
    inputs = example_inputs()
    spec = inputs.spec.model_copy(update={"images": Images(router="custom/router:1", pull_secrets=["team"])})
    inputs = replace(inputs, spec=spec, images=settings.images(spec.images))
    children = build_children(inputs, TENANCY, None)
    for child in children:
        assert not manifest_problems(child, schemas), child["kind"]
    cluster = next(c for c in children if c["kind"] == "RayService")["spec"]["rayClusterConfig"]
    ray_pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    router = next(c for c in children if c["kind"] == "Deployment")["spec"]["template"]
    for pod, image in [
        *((p, f"mirror.example/ai/serving:{__version__}") for p in ray_pods),
        (router, "custom/router:1"),
    ]:
        assert {c["image"] for c in pod["spec"]["containers"]} == {image}
        assert pod["spec"]["imagePullSecrets"] == [{"name": "mirror"}, {"name": "team"}]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_gcs_declares_a_silent_node_dead_within_seconds() -> None:
    """A cut link sends no reset: only the GCS's health checks end the streams of such a node, and
    Ray's defaults take 30-65 s. Three missed 1 s checks (the head's env, where the GCS runs)."""
    cluster = next(c for c in _children(False) if c["kind"] == "RayService")["spec"]["rayClusterConfig"]
    env = _env(cluster["headGroupSpec"]["template"]["spec"]["containers"][0])
    period, timeout = int(env["RAY_health_check_period_ms"]), int(env["RAY_health_check_timeout_ms"])
    assert int(env["RAY_health_check_failure_threshold"]) * (period + timeout) <= 6000


def test_autoscaled_pools_let_kuberay_add_and_remove_their_worker_pods(schemas: CustomResourceSchemas) -> None:
    """Serve replicas -> Ray worker pods -> nodes: each pool's group spans the pods its replica
    bounds need (0 for a pool that scales to zero), the in-tree autoscaler runs only when some pool
    autoscales, and the NodePool's limit holds the group's maximum."""
    objs = load_examples()
    raw = copy.deepcopy(objs["ModelDeployment/glm-46"])
    raw["spec"]["prefill"] = {
        "nodeGroup": "h100",
        "maxConcurrency": 2,
        "autoscaling": {"minReplicas": 0, "maxReplicas": 2},
    }
    inputs = planned_inputs(objs, raw, "2b7e1c4e-5b7a-4a57-9a63-7d5f3c0e9a11")
    rayservice = build_rayservice(inputs, None)
    assert manifest_problems(rayservice, schemas) == []
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"] == {"version": "v2", "upscalingMode": "Default", "idleTimeoutSeconds": 60}
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert [groups[p][k] for p in ("prefill", "decode") for k in ("replicas", "minReplicas", "maxReplicas")] == [
        0, 0, 2, 1, 1, 2
    ]  # fmt: skip
    h100 = NodeGroupSpec.model_validate(objs["NodeGroup/h100"]["spec"])
    pool = build_nodepool("h100", h100, Owner("NodeGroup", "h100", "u"))
    assert int(pool["spec"]["limits"]["nvidia.com/gpu"]) >= 8 * groups["prefill"]["maxReplicas"]
    fixed = copy.deepcopy(raw)
    fixed["spec"]["prefill"] = {"nodeGroup": "h100", "replicas": 1}
    fixed["spec"]["decode"] = {"nodeGroup": "h200", "replicas": 1}
    static = build_rayservice(planned_inputs(objs, fixed, "u"), None)["spec"]["rayClusterConfig"]
    assert static["enableInTreeAutoscaling"] is False and "autoscalerOptions" not in static


def test_a_decode_pool_at_min_replicas_0_has_the_router_hold_its_requests(tmp_path: Path) -> None:
    objs = load_examples()
    raw = copy.deepcopy(objs["ModelDeployment/glm-46"])
    raw["spec"]["decode"]["autoscaling"]["minReplicas"] = 0
    inputs = planned_inputs(objs, raw, "2b7e1c4e-5b7a-4a57-9a63-7d5f3c0e9a11")
    for spec, expected in ((inputs.spec, (raw["spec"]["model"]["name"],)), (example_inputs().spec, ())):
        children = build_children(replace(inputs, spec=spec), TENANCY, None)
        configmap = next(c for c in children if c["kind"] == "ConfigMap")
        (tmp_path / CONFIG_FILE).write_text(configmap["data"][CONFIG_FILE])
        assert load_config(tmp_path / CONFIG_FILE).flow.scale_from_zero == expected


def _router_objects(children: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {
        c["metadata"]["name"]: c
        for c in children
        if c["kind"] == kind and c["metadata"]["labels"][COMPONENT_LABEL] == "router"
    }


def test_one_shard_renders_the_unsharded_router() -> None:
    """Names, selectors and config of a router from before shards existed: nothing is replaced."""
    children = build_children(sharded_inputs(1), TENANCY, None)
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"):
        [(name, obj)] = _router_objects(children, kind).items()
        assert name == "glm-46-router"
        assert SHARD_LABEL not in json.dumps(obj)
    configmap = next(c for c in children if c["kind"] == "ConfigMap")
    assert sorted(configmap["data"]) == [CONFIG_FILE, TENANTS_FILE]
    assert "shard" not in yaml.safe_load(configmap["data"][CONFIG_FILE])
    # nor does the Serve application's args change (an operator upgrade would redeploy it)
    assert "shards" not in sharded_inputs(1).spec.wire()["router"]


def test_the_serve_application_reads_the_shards_back() -> None:
    spec = sharded_inputs(3).spec
    assert ModelDeploymentSpec.model_validate(spec.wire()).router.shards == 3


def test_each_shard_gets_its_deployment_service_and_budget(schemas: CustomResourceSchemas, tmp_path: Path) -> None:
    children = build_children(sharded_inputs(3), TENANCY, "redis://glmserve-redis:6379/0")
    assert [p for child in children for p in manifest_problems(child, schemas)] == []
    names = [f"glm-46-router-{i}" for i in range(3)]
    deployments = _router_objects(children, "Deployment")
    services = _router_objects(children, "Service")
    budgets = _router_objects(children, "PodDisruptionBudget")
    assert list(deployments) == list(services) == list(budgets) == names
    [policy] = _router_objects(children, "NetworkPolicy").values()
    configmap = next(c for c in children if c["kind"] == "ConfigMap")
    for index, name in enumerate(names):
        pod = deployments[name]["spec"]["template"]
        # each shard's Service and budget select its own pods only; the one policy covers them all
        for i, other in enumerate(names):
            labels = deployments[other]["spec"]["template"]["metadata"]["labels"]
            assert (services[name]["spec"]["selector"].items() <= labels.items()) == (i == index)
            assert (budgets[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()) == (i == index)
            assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        path = Path(pod["spec"]["containers"][0]["args"][-1])
        (tmp_path / path.name).write_text(configmap["data"][path.name])
        config = load_config(tmp_path / path.name)
        assert (config.shard.count, config.shard.index) == (3, index)
        assert config.flow.replicas == deployments[name]["spec"]["replicas"] == 2
    hashes = {d["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH] for d in deployments.values()}
    assert len(hashes) == 3


def test_the_ingress_and_the_engines_dial_every_shard_in_shard_order() -> None:
    """The address the ingress and engines get is parsed by the ingress's client (one
    RouterReplicas per shard, in shard order) and the engines' registration (every shard)."""
    inputs = sharded_inputs(3)
    cluster = build_rayservice(inputs, None)["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    [address] = {_env(c)["GLMSERVE_ROUTER_ADDRESS"] for pod in pods for c in pod["spec"]["containers"]}
    services = [f"glm-46-router-{i}.glmserve.svc:50051" for i in range(3)]
    client = connect(address)
    assert isinstance(client, RouterShards)
    assert [shard.target for shard in client.shards] == services
    # unresolvable here, so each stays as it is: the engines register with each shard's name
    assert asyncio.run(router_replicas([address])) == services
