"""Reads what a reconciliation needs from the API, runs it, and publishes its status and Events.

Every trigger (the object's own change, or a change of a node, child, NodeGroup, Plan or Tenant it
depends on) ends here. An object is reconciled by one thread at a time, and triggers that arrive
while a reconciliation is already queued for it are folded into that one.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from glmserve.common.deployment_status import ModelDeploymentStatus
from glmserve.common.nodegroup import NODE_GROUP_LABEL, NodeGroupStatus
from glmserve.common.resource import API_VERSION, Condition
from glmserve.common.tenancy import PlanSpec
from glmserve.common.tenant_status import TenantStatus
from glmserve.operator.build.events import build_event
from glmserve.operator.cluster import Cluster
from glmserve.operator.conditions import now, transitions
from glmserve.operator.deployments import Namespace, reconcile_deployment
from glmserve.operator.errors import API_ERRORS, as_kopf_error
from glmserve.operator.nodegroups import reconcile_node_group
from glmserve.operator.objects import Observed
from glmserve.operator.observe import node_summary
from glmserve.operator.secrets import secret_reader
from glmserve.operator.settings import OperatorSettings
from glmserve.operator.specs import valid_specs
from glmserve.operator.tenancy import tenant_status

Status = ModelDeploymentStatus | NodeGroupStatus | TenantStatus
Key = tuple[str, str | None, str]


def status_patch(status: Status) -> dict[str, Any]:
    """The whole status as a merge patch: fields now unset are sent as null, which removes them."""
    cleared = {field.alias or name: None for name, field in type(status).model_fields.items()}
    return cleared | status.wire()


class Reconciler:
    def __init__(self, cluster: Cluster, settings: OperatorSettings) -> None:
        self.cluster = cluster
        self.settings = settings
        self._guard = threading.Lock()
        self._locks: dict[Key, threading.Lock] = defaultdict(threading.Lock)
        self._waiting: set[Key] = set()

    @contextlib.contextmanager
    def _turn(self, key: Key, must_run: bool) -> Iterator[bool]:
        """One reconciliation of an object at a time. Yields False when another is already waiting
        for its turn: that one reads the object after this trigger, so this one can stand down,
        unless it `must_run` (kopf retries a failed change handler only if it ran and raised)."""
        with self._guard:
            queued = key in self._waiting
            self._waiting.add(key)
            lock = self._locks[key]
        if queued and not must_run:
            yield False
            return
        with lock:
            with self._guard:
                self._waiting.discard(key)
            yield True

    def _publish(self, body: dict[str, Any], old: list[Condition], status: Status) -> bool:
        """Write `status` if it changed (True then) and announce changed conditions as Events."""
        changed = (body.get("status") or {}) != status.wire()
        if changed:
            self.cluster.patch_status(body, status_patch(status))
        for event in transitions(old, status.conditions):
            self.cluster.create(
                build_event(
                    body,
                    type_=event.type,
                    reason=event.reason,
                    message=event.message,
                    time=now(),
                    suffix=uuid.uuid4().hex[:16],
                    instance=socket.gethostname(),
                )
            )
        return changed

    def _get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.cluster.get(API_VERSION, kind, name, namespace)

    def node_group(self, name: str, must_run: bool = False) -> bool:
        """True when the group's status changed."""
        with self._turn(("NodeGroup", None, name), must_run) as mine:
            if not mine:
                return False
            try:
                body = self._get("NodeGroup", name)
                if body is None:
                    return False
                obj = Observed.of(body)
                nodes = self.cluster.list("v1", "Node", label_selector=f"{NODE_GROUP_LABEL}={name}")
                status = reconcile_node_group(self.cluster, obj, [node_summary(n) for n in nodes])
                return self._publish(body, obj.conditions, status)
            except API_ERRORS as exc:
                raise as_kopf_error(exc, f"reconciling NodeGroup {name}") from exc

    def deployment(self, namespace: str, name: str, must_run: bool = False) -> None:
        with self._turn(("ModelDeployment", namespace, name), must_run) as mine:
            if not mine:
                return
            try:
                body = self._get("ModelDeployment", name, namespace)
                if body is None:
                    return
                obj = Observed.of(body)
                scope = Namespace(
                    node_groups={g["metadata"]["name"]: g for g in self.cluster.list(API_VERSION, "NodeGroup")},
                    plans=self._specs("Plan", namespace),
                    tenants=self._specs("Tenant", namespace),
                )
            except API_ERRORS as exc:
                raise as_kopf_error(exc, f"reading {namespace}/{name}") from exc
            outcome = reconcile_deployment(self.cluster, obj, scope, self.settings)
            try:
                self._publish(body, obj.conditions, outcome.status)
            except API_ERRORS as exc:
                raise as_kopf_error(exc, f"updating the status of {namespace}/{name}") from exc
            if outcome.error is not None:
                raise outcome.error

    def tenant(self, namespace: str, name: str, must_run: bool = False) -> None:
        with self._turn(("Tenant", namespace, name), must_run) as mine:
            if not mine:
                return
            try:
                body = self._get("Tenant", name, namespace)
                if body is None:
                    return
                obj = Observed.of(body)
                status = tenant_status(
                    name,
                    obj.spec,
                    valid_specs(PlanSpec, self._specs("Plan", namespace)),
                    secret_reader(self.cluster, namespace),
                    conditions=obj.conditions,
                    generation=obj.generation,
                )
                self._publish(body, obj.conditions, status)
            except API_ERRORS as exc:
                raise as_kopf_error(exc, f"reconciling Tenant {namespace}/{name}") from exc

    def _specs(self, kind: str, namespace: str) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o.get("spec") or {} for o in self.cluster.list(API_VERSION, kind, namespace)}

    def dependents(self, namespace: str | None = None, node_group: str | None = None) -> None:
        """Reconcile the deployments of `namespace` (all: None) that use `node_group` (any: None)."""
        try:
            found = self.cluster.list(API_VERSION, "ModelDeployment", namespace)
        except API_ERRORS as exc:
            raise as_kopf_error(exc, "listing ModelDeployments") from exc
        for body in found:
            spec = body.get("spec") or {}
            pools = {(spec.get(role) or {}).get("nodeGroup") for role in ("prefill", "decode")}
            if node_group is None or node_group in pools:
                self.deployment(body["metadata"]["namespace"], body["metadata"]["name"])

    def tenants(self, namespace: str) -> None:
        try:
            names = list(self._specs("Tenant", namespace))
        except API_ERRORS as exc:
            raise as_kopf_error(exc, f"listing Tenants of {namespace}") from exc
        for name in names:
            self.tenant(namespace, name)
