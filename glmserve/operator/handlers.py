"""kopf handlers: thin adapters from kopf's events to the Reconciler.

Our own objects are reconciled on create, update and operator start (resume), with kopf retrying
transient API errors (TemporaryError) with back-off. Changes of what they depend on (nodes,
children, NodeGroups, Plans, Tenants) are watched too and re-reconcile their dependents, so status
follows the cluster without polling. Secrets are not watched (that takes list/watch on every
Secret of the cluster): keys are re-read whenever a Tenant, Plan or ModelDeployment changes.
No timers, daemons or delete handlers: kopf would put a finalizer on every object for those, and
none is needed, since all children carry owner references and Kubernetes' garbage collector
deletes them with their owner.
"""

from __future__ import annotations

from typing import Any

import kopf

from glmserve.common.nodegroup import NODE_GROUP_LABEL
from glmserve.common.resource import GROUP, VERSION
from glmserve.operator.build.meta import DEPLOYMENT_LABEL, MANAGED_BY


@kopf.on.resume(GROUP, VERSION, "nodegroups")
@kopf.on.create(GROUP, VERSION, "nodegroups")
@kopf.on.update(GROUP, VERSION, "nodegroups")
def node_group_changed(name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.node_group(name, must_run=True)
    memo.reconciler.dependents(node_group=name)  # capacity changed: re-plan the deployments on it


@kopf.on.event("", "v1", "nodes", labels={NODE_GROUP_LABEL: kopf.PRESENT})
def node_event(labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    group = labels[NODE_GROUP_LABEL]
    if memo.reconciler.node_group(group):  # its ready nodes changed: Provisioned may have too
        memo.reconciler.dependents(node_group=group)


@kopf.on.resume(GROUP, VERSION, "modeldeployments")
@kopf.on.create(GROUP, VERSION, "modeldeployments")
@kopf.on.update(GROUP, VERSION, "modeldeployments")
def model_deployment_changed(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    assert namespace, "ModelDeployments are namespaced"
    memo.reconciler.deployment(namespace, name, must_run=True)


@kopf.on.event("ray.io", "v1", "rayservices", labels=MANAGED_BY)
@kopf.on.event("apps", "v1", "deployments", labels=MANAGED_BY)
def child_event(
    event: kopf.RawEvent, labels: kopf.Labels, status: kopf.Status, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    # A child without status is one we just wrote and its controller has not seen yet: nothing to read.
    relevant = event["type"] == "DELETED" or bool(status)
    if relevant and namespace and DEPLOYMENT_LABEL in labels:
        memo.reconciler.deployment(namespace, labels[DEPLOYMENT_LABEL])


@kopf.on.resume(GROUP, VERSION, "tenants")
@kopf.on.create(GROUP, VERSION, "tenants")
@kopf.on.update(GROUP, VERSION, "tenants")
def tenant_changed(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    assert namespace, "Tenants are namespaced"
    memo.reconciler.tenant(namespace, name, must_run=True)
    memo.reconciler.dependents(namespace=namespace)


@kopf.on.event(GROUP, VERSION, "tenants")
def tenant_event(event: kopf.RawEvent, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    if namespace and event["type"] == "DELETED":  # no finalizer, so no delete handler: the event says it
        memo.reconciler.dependents(namespace=namespace)


@kopf.on.event(GROUP, VERSION, "plans")
def plan_event(namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    if namespace:
        memo.reconciler.tenants(namespace)
        memo.reconciler.dependents(namespace=namespace)
