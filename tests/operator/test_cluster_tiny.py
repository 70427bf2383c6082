"""examples/cluster-tiny: glm-4.6-tiny on CPU node groups, rendered by the operator's own builders
into what Kubernetes, the upstream CRDs, Ray Serve and the app builder accept."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import yaml

from glmserve.common.deployment import GcsFaultTolerance
from glmserve.common.deployment_plan import ServeAppArgs
from glmserve.common.tenancy import PlanSpec, SecretKeyRef, TenantSpec, key_matches
from glmserve.operator.build.children import build_children
from glmserve.operator.build.random_secrets import build_ray_auth_secret, generated_secrets
from glmserve.operator.build.rayservice import build_rayservice
from glmserve.operator.tenancy import router_tenancy
from glmserve.serving.entrypoint import model_source, pool_llm_config
from tests.operator.conftest import CLUSTER_TINY, cluster_tiny_inputs, load_examples
from tests.operator.k8s_checks import CustomResourceSchemas, manifest_problems

GIB = 2**30


def _workers(inputs: Any = None) -> dict[str, dict[str, Any]]:
    cluster = build_rayservice(inputs or cluster_tiny_inputs(), None)["spec"]["rayClusterConfig"]
    return {g["groupName"]: g for g in cluster["workerGroupSpecs"]}


def test_every_child_validates_strictly(schemas: CustomResourceSchemas) -> None:
    children = build_children(cluster_tiny_inputs(), None, "redis://limits:6379/0")
    assert [p for child in children for p in manifest_problems(child, schemas)] == []


def test_the_tenants_resolve_with_their_development_keys() -> None:
    objs = load_examples(CLUSTER_TINY)

    def of(kind: str) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in objs.values() if o["kind"] == kind}

    def read(ref: SecretKeyRef) -> str:
        return base64.b64decode(of("Secret")[ref.name]["data"][ref.key]).decode()

    plans = {name: PlanSpec.model_validate(o["spec"]) for name, o in of("Plan").items()}
    tenants = {name: TenantSpec.model_validate(o["spec"]) for name, o in of("Tenant").items()}
    tenancy = router_tenancy(plans, tenants, ["free", "pro"], read)
    assert tenancy.problems == {} and tenancy.config is not None
    keys = {"alice": "sk-dev-alice-free", "bob": "sk-dev-bob-pro"}  # as the example's README documents them
    for tenant in tenancy.config.tenants:
        assert key_matches(keys[tenant.id], tenant.api_keys[0].sha256)
    assert {t.id: t.plan for t in tenancy.config.tenants} == {"alice": "free", "bob": "pro"}


def test_cpu_workers_ask_for_their_groups_cores_and_memory_and_no_gpu() -> None:
    workers = _workers()
    assert list(workers) == ["ingress", "prefill", "decode"]
    for role in ("prefill", "decode"):
        group = workers[role]
        assert group["rayStartParams"] == {"num-cpus": "1", "num-gpus": "0", "object-store-memory": str(256 * 2**20)}
        assert group["resources"] == {"glmserve-node-group-cpu-tiny": "1", f"glmserve-pool-{role}": "1"}
        # Two decode hosts, so that losing one leaves streams on the other to complete.
        assert (group["replicas"], group["maxReplicas"]) == {"prefill": (1, 1), "decode": (2, 2)}[role]
        pod = group["template"]["spec"]
        [container] = pod["containers"]
        size = {"cpu": "1", "memory": "3Gi"}
        assert container["resources"] == {"requests": size, "limits": size}
        assert pod["nodeSelector"] == {"glmserve.io/node-group": "cpu-tiny"}
        [shm] = [v for v in pod["volumes"] if v["name"] == "shm"]
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "512Mi"}
    assert "gpu" not in json.dumps(workers).lower().replace("num-gpus", "")


def test_prefill_and_decode_cannot_share_a_pod() -> None:
    """One engine slot per node: each pool's engine fills its own worker pod."""
    workers = _workers()
    prefill, decode = (workers[r]["resources"] for r in ("prefill", "decode"))
    assert prefill["glmserve-node-group-cpu-tiny"] == decode["glmserve-node-group-cpu-tiny"] == "1"
    assert "glmserve-pool-decode" not in prefill and "glmserve-pool-prefill" not in decode


def test_head_and_ingress_are_sized_for_a_development_machine() -> None:
    cluster = build_rayservice(cluster_tiny_inputs(), None)["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    ingress = _workers()["ingress"]["template"]["spec"]["containers"][0]["resources"]
    assert head == ingress == {"requests": {"cpu": "1", "memory": "2Gi"}}


def test_the_pools_run_vllms_cpu_backend_from_the_mounted_checkpoint() -> None:
    inputs = cluster_tiny_inputs()
    service = build_rayservice(inputs, None)
    args = ServeAppArgs.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"])
    source = model_source(args.deployment.model.resolve().source)
    assert source == "/mnt/models/glmserve-models/glm-4.6-tiny"
    for role, layout in args.planner.pools().items():
        config = pool_llm_config(args.deployment, role, layout, routed=True)
        assert config.accelerator_type is None and config.accelerator_config is not None
        assert config.accelerator_config.kind == "cpu"
        assert config.placement_group_config == {
            "bundles": [{"CPU": 1.0, "glmserve-node-group-cpu-tiny": 1.0, f"glmserve-pool-{role}": 1.0}],
            "strategy": "STRICT_PACK",
        }
        kwargs = config.engine_kwargs
        assert kwargs["enforce_eager"] is True and kwargs["kv_cache_memory_bytes"] == GIB // 4
        assert "gpu_memory_utilization" not in kwargs and "speculative_config" not in kwargs
        assert config.model_loading_config.model_source == source
    for group in _workers(inputs).values():
        mounts = {m["name"]: m["mountPath"] for m in group["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert source.startswith(mounts["weights"] + "/")


def test_the_ray_cluster_requires_the_operators_token(schemas: CustomResourceSchemas) -> None:
    inputs = cluster_tiny_inputs()
    cluster = build_rayservice(inputs, None)["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "tiny-ray-auth"}
    secret = build_ray_auth_secret(inputs, "ab" * 32)
    assert manifest_problems(secret, schemas) == []
    assert secret["metadata"]["name"] == "tiny-ray-auth" and secret["metadata"]["namespace"] == "glmserve"
    assert base64.b64decode(secret["data"]["auth_token"]).decode() == "ab" * 32
    assert set(generated_secrets(inputs)) == {"tiny-cache-salt", "tiny-ray-auth", "tiny-router-auth"}


def test_gcs_fault_tolerance_keeps_the_heads_state_in_the_given_redis(schemas: CustomResourceSchemas) -> None:
    inputs = cluster_tiny_inputs()
    service = build_rayservice(inputs, None)
    assert manifest_problems(service, schemas) == []
    assert service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"] == {
        "redisAddress": "gcs-redis.glmserve.svc:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "gcs-redis", "key": "password"}}},
    }
    without_password = GcsFaultTolerance(redis_address="rediss://10.0.0.5:6380")
    inputs = replace(inputs, spec=inputs.spec.model_copy(update={"gcs_fault_tolerance": without_password}))
    options = build_rayservice(inputs, None)["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert options == {"redisAddress": "rediss://10.0.0.5:6380"}
    inputs = replace(inputs, spec=inputs.spec.model_copy(update={"gcs_fault_tolerance": None}))
    assert "gcsFaultToleranceOptions" not in build_rayservice(inputs, None)["spec"]["rayClusterConfig"]
