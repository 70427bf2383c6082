"""A Kubernetes API for the end-to-end tests: kmock in a thread, or a real cluster's kubeconfig.

Both expose the same `Api` (the `kubernetes` client's DynamicClient), so one test body runs on
either. What only a real cluster does (garbage collection, controllers such as KubeRay or the
kubelet) is emulated on kmock through the API itself, and only there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kmock
import kubernetes
import yaml
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

T = TypeVar("T")

# Kinds the operator creates and owns: what garbage collection has to sweep.
OWNED = [
    ("karpenter.sh/v1", "NodePool"),
    ("ray.io/v1", "RayService"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("v1", "Secret"),
]


def eventually(check: Callable[[], T | None], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy (an AssertionError counts as not yet)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except AssertionError as exc:
            last, result = exc, None
        if result:
            return result
        time.sleep(0.25)  # the operator, kmock and this test share one interpreter: poll gently
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}") from last


def _raw(_client: DynamicClient, data: dict[str, Any]) -> dict[str, Any]:
    return data  # kmock's lists name no `kind`, which the client's own serializer needs


class Api:
    def __init__(self, kubeconfig: Path) -> None:
        self.client = DynamicClient(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))

    def resource(self, api_version: str, kind: str) -> Any:
        return self.client.resources.get(api_version=api_version, kind=kind)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return self.resource(obj["apiVersion"], obj["kind"]).create(body=obj, namespace=meta.get("namespace")).to_dict()

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.resource(api_version, kind).get(
                name=name, namespace=namespace, serializer=_raw
            )
            return found
        except NotFoundError:
            return None

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        found = self.resource(api_version, kind).get(namespace=namespace, serializer=_raw)
        return list(found.get("items") or [])

    def patch(self, obj: dict[str, Any], body: dict[str, Any], status: bool = False) -> None:
        resource = self.resource(obj["apiVersion"], obj["kind"])
        target = resource.status if status else resource
        meta = obj["metadata"]
        target.patch(
            body=body,
            name=meta["name"],
            namespace=meta.get("namespace"),
            content_type="application/merge-patch+json",
        )

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        with contextlib.suppress(NotFoundError):
            self.resource(api_version, kind).delete(name=name, namespace=namespace)


# The operator's credential on kmock: its requests carry it, so they can be told from the test's own.
OPERATOR_TOKEN = "glmserve-operator-under-test"
# RBAC's verb for each request kmock records (HTTP method, kmock's action); PATCH is `patch`, PUT `update`.
_VERBS = {
    ("GET", kmock.action.LIST): "list",
    ("GET", kmock.action.WATCH): "watch",
    ("GET", kmock.action.FETCH): "get",
    ("POST", kmock.action.CREATE): "create",
    ("PATCH", kmock.action.UPDATE): "patch",
    ("DELETE", kmock.action.DELETE): "delete",
}


class Cluster:
    """What a test needs of the cluster beyond the API: who plays the controllers."""

    emulated: bool
    api: Api
    kubeconfig: Path
    operator_kubeconfig: Path  # what the operator logs in with (on kmock: with OPERATOR_TOKEN)

    def garbage_collect(self) -> None:
        """Delete objects whose owner is gone (kube-controller-manager does this on a real cluster)."""

    @contextlib.contextmanager
    def namespace(self, prefix: str) -> Iterator[str]:
        """A fresh namespace for one test, deleted afterwards."""
        name = unique(prefix)
        if self.emulated:  # kmock keeps no Namespace objects (and cannot parse creating one)
            yield name
            return
        self.api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        try:
            yield name
        finally:
            self.api.delete("v1", "Namespace", name)


class KmockCluster(Cluster):
    """kmock's Kubernetes emulator on its own thread and event loop, with the CRDs' resources served."""

    emulated = True

    def __init__(self, crds: list[dict[str, Any]], workdir: Path) -> None:
        self._crds = crds
        self._workdir = workdir
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.server: kmock.KubernetesEmulator | None = None

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as server, kmock.Server(server) as http:
            server.resources.load_bundled()  # kopf waits forever without v1/namespaces and v1/events
            for crd in self._crds:
                names = crd["spec"]["names"]
                for version in crd["spec"]["versions"]:
                    key = f"{crd['spec']['group']}/{version['name']}/{names['plural']}"
                    server.resources[key] = kmock.ResourceInfo(
                        kind=names["kind"],
                        singular=names["singular"],
                        namespaced=crd["spec"]["scope"] == "Namespaced",
                        verbs={"list", "watch", "get", "create", "patch", "delete"},
                        subresources={"status"} if "status" in version.get("subresources", {}) else set(),
                    )
            self.server = server
            self.url = str(http.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> KmockCluster:
        # One access-log line per request costs the shared interpreter more than serving it.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("kmock did not start")
        self.kubeconfig = self._workdir / "kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
            "current-context": "kmock",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.operator_kubeconfig = self._workdir / "operator-kubeconfig"
        config["users"] = [{"name": "kmock", "user": {"token": OPERATOR_TOKEN}}]
        self.operator_kubeconfig.write_text(yaml.safe_dump(config))
        self.api = Api(self.kubeconfig)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def watching(self, plurals: set[str]) -> bool:
        """kmock replays objects only to watches that exist: create test objects after kopf's watches."""
        assert self.server is not None
        watched = {r.resource.plural for r in list(self.server) if r.action == kmock.action.WATCH and r.resource}
        return plurals <= watched

    def operator_calls(self) -> set[tuple[str, str, str]]:
        """(API group, resource or resource/subresource, RBAC verb) of every API request the operator
        has made so far (discovery aside, which RBAC grants every authenticated user)."""
        assert self.server is not None
        calls = set()
        for request in list(self.server):
            headers = {key.lower(): value for key, value in request.headers.items()}
            resource = request.resource
            if headers.get("authorization") != f"Bearer {OPERATOR_TOKEN}" or resource is None or not resource.plural:
                continue  # the test's own requests, or discovery (/api, /apis/GROUP/VERSION)
            verb = _VERBS.get((str(request.method.value).upper(), request.action))
            assert verb is not None, f"a request RBAC has no verb for: {request.method} {request.url}"
            # RBAC names a proxy call's subresource without the path behind it (pods/proxy).
            sub = (request.subresource or "").split("/")[0]
            plural = resource.plural + (f"/{sub}" if sub else "")
            calls.add((resource.group or "", plural, verb))
        return calls

    def serve_pod_proxy(self, namespace: str, pod: str, port: int, path: str, body: str, *, content_type: str) -> None:
        """Answer GETs of `path` on a pod's `port` through the API server's proxy, as the pod would
        (the API server passes the pod's content type on, which the kubernetes client checks)."""
        assert self.server is not None and self._loop is not None
        server, url = self.server, f"get /api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/{path.lstrip('/')}"

        async def add() -> None:  # on kmock's own loop, between its requests
            server[url] << {"Content-Type": content_type} << body.encode()

        asyncio.run_coroutine_threadsafe(add(), self._loop).result(10)

    def garbage_collect(self) -> None:
        owners: dict[tuple[str, str, str | None, str], bool] = {}
        for api_version, kind in OWNED:
            for obj in self.api.list(api_version, kind):
                meta = obj["metadata"]
                for ref in meta.get("ownerReferences") or []:
                    namespaced = self.api.resource(ref["apiVersion"], ref["kind"]).namespaced
                    key = (ref["apiVersion"], ref["kind"], meta.get("namespace") if namespaced else None, ref["name"])
                    if key not in owners:
                        owners[key] = self.api.get(key[0], key[1], key[3], key[2]) is not None
                    if not owners[key]:
                        self.api.delete(api_version, kind, meta["name"], meta.get("namespace"))


class RealCluster(Cluster):
    """A cluster of the user's kubeconfig: our CRDs (and missing upstream ones) installed for the run."""

    emulated = False

    def __init__(self, kubeconfig: Path, crds: list[dict[str, Any]]) -> None:
        self.kubeconfig = self.operator_kubeconfig = kubeconfig
        self.api = Api(kubeconfig)
        self._crds = crds
        self._installed: list[str] = []

    def __enter__(self) -> RealCluster:
        for crd in self._crds:
            name = crd["metadata"]["name"]
            if self.api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name) is None:
                self.api.create(crd)
                self._installed.append(name)
        for name in self._installed:
            eventually(lambda n=name: _established(self.api, n), 60, f"CRD {name} to be established")
        self.api.client.resources.invalidate_cache()
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self._installed:
            self.api.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)


def _established(api: Api, name: str) -> bool:
    crd = api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name) or {}
    return any(
        c["type"] == "Established" and c["status"] == "True" for c in crd.get("status", {}).get("conditions", [])
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
