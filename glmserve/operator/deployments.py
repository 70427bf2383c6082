"""Reconciling one ModelDeployment: validate, plan, render and apply its children, read its status.

A spec error or an infeasible plan is permanent until the spec (or a NodeGroup) changes: it becomes
a condition and no child is created. API failures surface as `error` for kopf to retry.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from glmserve.common.deployment import DEPLOYMENT_NAME, MSG_DEPLOYMENT_NAME, ModelDeploymentSpec
from glmserve.common.deployment_plan import PlanStatus, plan_for
from glmserve.common.deployment_status import ColdStarts, ModelDeploymentStatus, Phase
from glmserve.common.errors import ConfigError
from glmserve.common.nodegroup import NodeGroupSpec
from glmserve.common.resource import Condition
from glmserve.common.tenancy import PlanSpec, TenantSpec
from glmserve.operator.build.children import (
    MONITORING_KINDS,
    SHARDED_KINDS,
    build_children,
    router_selector,
    stale_router_objects,
)
from glmserve.operator.build.inputs import ROUTER_METRICS_PORT, DeploymentInputs
from glmserve.operator.build.meta import DEPLOYMENT_LABEL, Owner
from glmserve.operator.build.random_secrets import generated_secrets
from glmserve.operator.cluster import Cluster
from glmserve.operator.conditions import set_condition, spec_problems
from glmserve.operator.errors import API_ERRORS, as_kopf_error
from glmserve.operator.objects import Observed
from glmserve.operator.observe import cold_starts, rayservice_ready, ready_replicas, router_pods
from glmserve.operator.secrets import secret_reader
from glmserve.operator.settings import OperatorSettings
from glmserve.operator.specs import valid_specs
from glmserve.operator.tenancy import router_tenancy

KIND = "ModelDeployment"


@dataclass(frozen=True, slots=True)
class Namespace:
    """What the cluster holds that the deployment depends on, as read for this reconciliation."""

    node_groups: dict[str, dict[str, Any]]  # name -> {"spec": ..., "status": ...}
    plans: dict[str, dict[str, Any]]  # name -> spec
    tenants: dict[str, dict[str, Any]]  # name -> spec


@dataclass(frozen=True, slots=True)
class Outcome:
    status: ModelDeploymentStatus
    error: Exception | None = None  # for kopf: retry (TemporaryError) or give up (PermanentError)


def _stop(obj: Observed, phase: Phase, reason: str, message: str) -> Outcome:
    conditions = set_condition(
        obj.conditions, "Planned", status=False, reason=reason, message=message, generation=obj.generation
    )
    for type_ in ("Provisioned", "Ready"):
        conditions = set_condition(
            conditions, type_, status=False, reason=reason, message="not planned", generation=obj.generation
        )
    return Outcome(ModelDeploymentStatus(phase=phase, conditions=conditions, observed_generation=obj.generation))


def reconcile_deployment(cluster: Cluster, obj: Observed, ns: Namespace, settings: OperatorSettings) -> Outcome:
    namespace = obj.namespace
    if namespace is None:
        raise ValueError(f"{KIND} {obj.name} has no namespace; the CRD is namespaced")
    if not re.match(DEPLOYMENT_NAME, obj.name):
        return _stop(obj, "Invalid", "InvalidName", MSG_DEPLOYMENT_NAME)
    try:
        spec = settings.complete(ModelDeploymentSpec.model_validate(obj.spec))
    except ValidationError as exc:
        return _stop(obj, "Invalid", "InvalidSpec", spec_problems(exc))
    groups = valid_specs(NodeGroupSpec, {name: body["spec"] for name, body in ns.node_groups.items()})
    try:
        plan = plan_for(spec, groups)
    except ConfigError as exc:
        not_found = exc.code == "NodeGroupNotFound"
        return _stop(obj, "Pending" if not_found else "Invalid", exc.code or "InvalidLayout", exc.message)
    if not plan.feasible:
        return _stop(obj, "Infeasible", "Infeasible", "; ".join(plan.shortfalls))

    layout = PlanStatus.of(plan, groups)
    used = {p.node_group for p in layout.pools().values()}
    inputs = DeploymentInputs(
        name=obj.name,
        namespace=namespace,
        owner=Owner(KIND, obj.name, obj.uid),
        spec=spec,
        groups={name: groups[name] for name in used},
        plan=layout,
        images=settings.images(spec.images),
        ray_version=settings.ray_version,
    )
    tenancy = router_tenancy(
        valid_specs(PlanSpec, ns.plans),
        valid_specs(TenantSpec, ns.tenants),
        spec.plans,
        secret_reader(cluster, namespace),
    )
    conditions = set_condition(
        obj.conditions,
        "Planned",
        status=True,
        reason="Planned",
        message="; ".join(
            f"{role}: {p.gpus_per_replica} x {p.gpu} ({p.nodes_per_replica} node(s)) per replica on {p.node_group}"
            for role, p in layout.pools().items()
        ),
        generation=obj.generation,
    )
    skipped: list[str] = []
    try:
        ensure_secrets(cluster, inputs)
        children = build_children(inputs, tenancy.config, settings.redis_url)
        for child in children:
            if child["kind"] in MONITORING_KINDS and not cluster.serves(child["apiVersion"], child["kind"]):
                skipped.append(child["kind"])
                continue
            cluster.apply(child)
        prune_router_shards(cluster, inputs, children)
        status = _observe(
            cluster,
            inputs,
            ns,
            has_config=tenancy.config is not None,
            skipped=sorted(set(skipped)),
            conditions=conditions,
            generation=obj.generation,
            previous=obj.status,
        )
    except API_ERRORS as exc:
        partial = ModelDeploymentStatus(
            phase="Provisioning",
            conditions=conditions,
            endpoint=inputs.endpoint,
            plan=layout,
            observed_generation=obj.generation,
        )
        return Outcome(partial, as_kopf_error(exc, f"reconciling {namespace}/{obj.name}"))
    return Outcome(status)


def prune_router_shards(cluster: Cluster, inputs: DeploymentInputs, children: list[dict[str, Any]]) -> None:
    """Deleted after the new shards are applied, so the ingress and engines, which follow the new
    router address as their pods roll, have a router to reach meanwhile."""
    for api_version, kind in SHARDED_KINDS:
        live = cluster.list(api_version, kind, inputs.namespace, label_selector=router_selector(inputs))
        for name in stale_router_objects(children, live, api_version, kind):
            cluster.delete(api_version, kind, name, inputs.namespace)


def ensure_secrets(cluster: Cluster, inputs: DeploymentInputs) -> None:
    """Created once and never re-rendered: a new cache salt would change every tenant's salt, and so
    orphan every cached prefix; a new Ray token would lock the running nodes out of their cluster."""
    for name, build in generated_secrets(inputs).items():
        if cluster.get("v1", "Secret", name, inputs.namespace) is None:
            cluster.create(build(inputs, secrets.token_hex(32)))


def _observe(
    cluster: Cluster,
    inputs: DeploymentInputs,
    ns: Namespace,
    *,
    has_config: bool,
    skipped: list[str],
    conditions: list[Condition],
    generation: int | None,
    previous: dict[str, Any],
) -> ModelDeploymentStatus:
    plan = inputs.plan
    short = []
    for group in {p.node_group for p in plan.pools().values()}:
        needed = sum(p.nodes(p.min_replicas) for p in plan.pools().values() if p.node_group == group)
        ready = int((ns.node_groups[group].get("status") or {}).get("readyNodes", 0))
        if ready < needed:
            short.append(f"{group}: {ready} of {needed} node(s) ready")
    conditions = set_condition(
        conditions,
        "Provisioned",
        status=not short,
        reason="NodesReady" if not short else "WaitingForNodes",
        message="; ".join(short) or "every pool's nodes are ready",
        generation=generation,
    )
    serving, serving_message = rayservice_ready(cluster.get("ray.io/v1", "RayService", inputs.name, inputs.namespace))
    shards_ready = [
        int(((router or {}).get("status") or {}).get("readyReplicas") or 0)
        for router in (cluster.get("apps/v1", "Deployment", s.name, inputs.namespace) for s in inputs.router_shards)
    ]
    router_ready = sum(shards_ready)
    pods = cluster.list("v1", "Pod", inputs.namespace, label_selector=f"{DEPLOYMENT_LABEL}={inputs.name}")
    replicas = ready_replicas(inputs.name, plan, pods, router_ready)
    started = _cold_starts(cluster, inputs, pods, previous.get("coldStarts"))
    problems = [] if serving else [serving_message]
    if not has_config:
        problems.append(f"no Plan in namespace {inputs.namespace} applies, so the router admits nobody")
    elif not router_ready:
        problems.append("no router pod is ready")
    elif down := [shard.name for shard, ready in zip(inputs.router_shards, shards_ready, strict=True) if not ready]:
        problems.append(f"no pod of router shard(s) {', '.join(down)} is ready")
    ready = not problems
    message = "; ".join(problems) or f"serving at {inputs.endpoint}"
    if skipped:
        message += f" (not rendered, this cluster does not serve: {', '.join(skipped)})"
    conditions = set_condition(
        conditions,
        "Ready",
        status=ready,
        reason="Ready" if ready else "NotReady",
        message=message,
        generation=generation,
    )
    return ModelDeploymentStatus(
        phase="Ready" if ready else "Provisioning",
        conditions=conditions,
        endpoint=inputs.endpoint,
        ready_replicas=replicas,
        plan=plan,
        cold_starts=started,
        observed_generation=generation,
    )


def _cold_starts(
    cluster: Cluster, inputs: DeploymentInputs, pods: list[dict[str, Any]], previous: dict[str, Any] | None
) -> ColdStarts | None:
    """Read from the router pods' metrics when the decode pool may be empty (only then does the
    router time its starts); the last reading stays while no router pod answers (one restarted
    starts counting again)."""
    if inputs.plan.decode.min_replicas > 0:
        return None
    expositions = {
        pod: text
        for pod in router_pods(inputs.name, pods)
        if (text := cluster.pod_get(pod, inputs.namespace, ROUTER_METRICS_PORT, "/metrics")) is not None
    }
    if not expositions:
        return ColdStarts.model_validate(previous) if previous else None
    return cold_starts(expositions, inputs.spec.model.served_name or inputs.spec.model.name)
