"""kopf handlers: thin adapters from kopf's events to the reconcilers.

kopf passes each index (the functions decorated with `kopf.index`) as a keyword argument of the same
name; they arrive in `**indexes` so the handlers still match kopf's callback protocols.

Every object is reconciled on create, update and operator start (resume), and again every
`resync_seconds` by a timer, which picks up what no event announces: nodes becoming ready, a Plan,
Tenant or key Secret changing, KubeRay reporting the Serve application healthy. No finalizers: all
children carry owner references, so Kubernetes' garbage collector removes them with their owner.
"""

from __future__ import annotations

from typing import Any

import kopf

from glmserve.common.deployment_status import ModelDeploymentStatus
from glmserve.common.nodegroup import NODE_GROUP_LABEL, NodeGroupStatus
from glmserve.common.resource import GROUP, VERSION, Condition
from glmserve.common.tenancy import PlanSpec
from glmserve.common.tenant_status import TenantStatus
from glmserve.operator.conditions import transitions
from glmserve.operator.deployments import DeploymentObject, Namespace, Outcome, reconcile_deployment
from glmserve.operator.nodegroups import NodeGroupObject, reconcile_node_group
from glmserve.operator.observe import node_summary
from glmserve.operator.secrets import secret_reader
from glmserve.operator.settings import OperatorSettings
from glmserve.operator.specs import valid_specs
from glmserve.operator.tenancy import tenant_status

SETTINGS = OperatorSettings.from_env()
RESYNC = SETTINGS.resync_seconds


def _conditions(status: Any) -> list[Condition]:
    return [Condition.model_validate(c) for c in (status or {}).get("conditions") or []]


def _publish(
    body: kopf.Body,
    patch: kopf.Patch,
    status: ModelDeploymentStatus | NodeGroupStatus | TenantStatus,
    old: list[Condition],
) -> None:
    """Write `status` (a Spec model) as a full replacement and announce changed conditions."""
    fields = {field.alias or name: None for name, field in type(status).model_fields.items()}
    patch.status.update(fields | status.wire())
    for event in transitions(old, status.conditions):
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


# Indexes: in-memory views of the objects reconcilers read, kept current by kopf's watches.


@kopf.index(GROUP, VERSION, "nodegroups")
def node_groups(name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[str, Any]:
    return {name: {"spec": dict(spec), "status": dict(status)}}


@kopf.index("", "v1", "nodes", labels={NODE_GROUP_LABEL: kopf.PRESENT})
def nodes(labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {labels[NODE_GROUP_LABEL]: node_summary(dict(body))}


@kopf.index(GROUP, VERSION, "plans")
def plans(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[str | None, Any]:
    return {namespace: (name, dict(spec))}


@kopf.index(GROUP, VERSION, "tenants")
def tenants(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[str | None, Any]:
    return {namespace: (name, dict(spec))}


# NodeGroups


@kopf.on.resume(GROUP, VERSION, "nodegroups")
@kopf.on.create(GROUP, VERSION, "nodegroups")
@kopf.on.update(GROUP, VERSION, "nodegroups")
@kopf.timer(GROUP, VERSION, "nodegroups", interval=RESYNC, initial_delay=RESYNC)
def node_group(
    *, name: str, uid: str | None, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, body: kopf.Body,
    patch: kopf.Patch, memo: kopf.Memo, **indexes: Any,
) -> None:  # fmt: skip
    nodes: kopf.Index[str, dict[str, Any]] = indexes["nodes"]
    old = _conditions(status)
    group = NodeGroupObject(name, uid, meta.get("generation"), dict(spec), old)
    result = reconcile_node_group(memo.cluster, group, list(nodes.get(name, [])))
    _publish(body, patch, result, old)


# ModelDeployments


@kopf.on.resume(GROUP, VERSION, "modeldeployments")
@kopf.on.create(GROUP, VERSION, "modeldeployments")
@kopf.on.update(GROUP, VERSION, "modeldeployments")
@kopf.timer(GROUP, VERSION, "modeldeployments", interval=RESYNC, initial_delay=RESYNC)
def model_deployment(
    *, name: str, namespace: str | None, uid: str | None, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status,
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **indexes: Any,
) -> None:  # fmt: skip
    node_groups: kopf.Index[str, dict[str, Any]] = indexes["node_groups"]
    plans: kopf.Index[str, tuple[str, dict[str, Any]]] = indexes["plans"]
    tenants: kopf.Index[str, tuple[str, dict[str, Any]]] = indexes["tenants"]
    assert namespace, "ModelDeployments are namespaced"
    old = _conditions(status)
    obj = DeploymentObject(name, namespace, uid, meta.get("generation"), dict(spec), old)
    scope = Namespace(
        node_groups={n: next(iter(store)) for n, store in node_groups.items()},
        plans=dict(plans.get(namespace, [])),
        tenants=dict(tenants.get(namespace, [])),
    )
    outcome: Outcome = reconcile_deployment(memo.cluster, obj, scope, SETTINGS)
    _publish(body, patch, outcome.status, old)
    if outcome.skipped:
        logger.info(f"not served by this cluster, skipped: {', '.join(outcome.skipped)}")
    if outcome.error is not None:
        raise outcome.error


# Tenants


@kopf.on.resume(GROUP, VERSION, "tenants")
@kopf.on.create(GROUP, VERSION, "tenants")
@kopf.on.update(GROUP, VERSION, "tenants")
@kopf.timer(GROUP, VERSION, "tenants", interval=RESYNC, initial_delay=RESYNC)
def tenant(
    *, name: str, namespace: str | None, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, body: kopf.Body,
    patch: kopf.Patch, memo: kopf.Memo, **indexes: Any,
) -> None:  # fmt: skip
    plans: kopf.Index[str, tuple[str, dict[str, Any]]] = indexes["plans"]
    assert namespace, "Tenants are namespaced"
    old = _conditions(status)
    result = tenant_status(
        name,
        dict(spec),
        valid_specs(PlanSpec, dict(plans.get(namespace, []))),
        secret_reader(memo.cluster, namespace),
        conditions=old,
        generation=meta.get("generation"),
    )
    _publish(body, patch, result, old)
