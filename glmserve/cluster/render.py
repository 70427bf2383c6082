"""`-f FILE|DIR`: the objects a platform team would `kubectl apply`, validated and rendered by the
operator's own reconciler into what the API server would then hold (RayService, router, Secrets...)."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from glmserve.cluster.memory import StoredObjects
from glmserve.common.deployment import ModelDeploymentSpec
from glmserve.common.errors import ConfigError, validation_problems
from glmserve.common.nodegroup import NodeGroupSpec
from glmserve.common.tenancy import PlanSpec, TenantSpec
from glmserve.operator.deployments import Namespace, reconcile_deployment
from glmserve.operator.objects import Observed
from glmserve.operator.secrets import secret_reader
from glmserve.operator.settings import OperatorSettings
from glmserve.operator.tenancy import router_tenancy

GROUP = "glmserve.io/v1alpha1"
SPECS: dict[str, type[BaseModel]] = {
    "NodeGroup": NodeGroupSpec,
    "ModelDeployment": ModelDeploymentSpec,
    "Plan": PlanSpec,
    "Tenant": TenantSpec,
}
CORE = {"Secret", "ConfigMap"}


@dataclass(frozen=True, slots=True)
class Rendered:
    namespace: str
    deployment: str
    store: StoredObjects  # the objects given plus every child the operator rendered

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.store.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        if len(found) != 1:
            raise ConfigError(f"expected one {kind}{' ' + name if name else ''}, the operator rendered {len(found)}")
        return found[0]

    def data(self, kind: str) -> dict[str, dict[str, str]]:
        return {
            o["metadata"]["name"]: dict(o.get("data") or {})
            for o in self.store.of_kind(kind)
            if o["metadata"].get("namespace") == self.namespace
        }


def load(paths: list[Path]) -> list[dict[str, Any]]:
    """Every YAML document of the files given (a directory: its *.yaml/*.yml files, sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"-f {path}: no such file or directory")
    objects = []
    for file in files:
        try:
            docs = [d for d in yaml.safe_load_all(file.read_text()) if d is not None]
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from None
        for i, doc in enumerate(docs):
            where = f"{file} document {i + 1}"
            if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict) or "name" not in doc["metadata"]:
                raise ConfigError(f"{where}: not a Kubernetes object (kind, metadata.name)")
            kind = doc.get("kind")
            if kind in SPECS and doc.get("apiVersion") != GROUP:
                raise ConfigError(f"{where}: apiVersion must be {GROUP} for a {kind}")
            if kind not in SPECS and kind not in CORE:
                raise ConfigError(f"{where}: kind {kind!r} is not one of {', '.join([*SPECS, *sorted(CORE)])}")
            objects.append(_as_stored(doc))
    if not objects:
        raise ConfigError(f"-f {' '.join(map(str, paths))}: no objects found")
    return objects


def _as_stored(obj: dict[str, Any]) -> dict[str, Any]:
    """A Secret's `stringData` becomes base64 `data`, as the API server stores it."""
    if obj["kind"] != "Secret" or not obj.get("stringData"):
        return obj
    encoded = {k: base64.b64encode(str(v).encode()).decode() for k, v in obj["stringData"].items()}
    return {**{k: v for k, v in obj.items() if k != "stringData"}, "data": {**(obj.get("data") or {}), **encoded}}


def _validate(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        model = SPECS.get(obj["kind"])
        if model is None:
            continue
        try:
            model.model_validate(obj.get("spec") or {})
        except ValidationError as exc:
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            raise ConfigError(f"{name} is invalid: {validation_problems(exc, where=_spec_field)}") from None


def _spec_field(loc: tuple[int | str, ...]) -> str:
    return ".".join(["spec", *map(str, loc)])


def _by_name(objects: list[dict[str, Any]], kind: str, namespace: str | None) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o
        for o in objects
        if o["kind"] == kind and (namespace is None or o["metadata"].get("namespace") == namespace)
    }


def render(objects: list[dict[str, Any]], settings: OperatorSettings) -> Rendered:
    """The ModelDeployment reconciled once, as the operator would on a cluster holding `objects`."""
    _validate(objects)
    deployments = [o for o in objects if o["kind"] == "ModelDeployment"]
    if len(deployments) != 1:
        raise ConfigError(f"cluster up runs exactly one ModelDeployment; the files hold {len(deployments)}")
    body = {**deployments[0], "metadata": {**deployments[0]["metadata"], "uid": str(uuid.uuid4()), "generation": 1}}
    obj = Observed.of(body)
    if obj.namespace is None:
        raise ConfigError(f"ModelDeployment/{obj.name}: metadata.namespace is required (the CRD is namespaced)")
    ns = obj.namespace
    node_groups = {name: {"spec": o["spec"], "status": {}} for name, o in _by_name(objects, "NodeGroup", None).items()}
    plans = {name: o["spec"] for name, o in _by_name(objects, "Plan", ns).items()}
    tenants = {name: o["spec"] for name, o in _by_name(objects, "Tenant", ns).items()}
    store = StoredObjects([o for o in objects if o["kind"] in CORE])
    outcome = reconcile_deployment(store, obj, Namespace(node_groups, plans, tenants), settings)
    planned = next((c for c in outcome.status.conditions if c.type == "Planned"), None)
    if planned is None or planned.status != "True":
        reason = planned.message if planned else "not planned"
        raise ConfigError(f"ModelDeployment/{obj.name} ({outcome.status.phase}): {reason}")
    spec = ModelDeploymentSpec.model_validate(obj.spec)
    tenancy = router_tenancy(
        {n: PlanSpec.model_validate(p) for n, p in plans.items()},
        {n: TenantSpec.model_validate(t) for n, t in tenants.items()},
        spec.plans,
        secret_reader(store, ns),
    )
    if tenancy.problems:
        raise ConfigError("; ".join(f"Tenant/{t}: {why}" for t, why in sorted(tenancy.problems.items())))
    return Rendered(ns, obj.name, store)
