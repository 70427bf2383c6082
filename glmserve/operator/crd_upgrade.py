"""The chart's pre-upgrade hook: `python -m glmserve.operator.crd_upgrade DIR` applies every CRD in DIR.

Helm installs a chart's `crds/` on first install only and never upgrades them, so without this a
field added to a spec would be pruned by the API server's old schema. The hook runs before the new
operator rolls out; server-side apply with `--force-conflicts` semantics takes over the fields that
Helm's install (or a `kubectl apply`) set, and creates CRDs a newer chart adds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import kubernetes
import yaml
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from glmserve.operator.cluster import load_config

FIELD_MANAGER = "glmserve-chart"


def apply_crds(client: DynamicClient, directory: Path) -> list[str]:
    """Server-side apply each `*.yaml` CRD in `directory`; returns the names applied, in order."""
    crds = client.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    applied = []
    for path in sorted(directory.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        try:
            crds.get(name=body["metadata"]["name"])
        except NotFoundError:  # a CRD this release adds: created by name, as the hook's role allows
            crds.create(body=body, field_manager=FIELD_MANAGER)
        else:
            crds.server_side_apply(body=body, field_manager=FIELD_MANAGER, force_conflicts=True)
        applied.append(body["metadata"]["name"])
    return applied


def main(argv: list[str]) -> None:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        raise SystemExit("usage: python -m glmserve.operator.crd_upgrade DIR  (a directory of CRD YAML files)")
    load_config()
    client = DynamicClient(kubernetes.client.ApiClient())
    for name in apply_crds(client, Path(argv[0])):
        print(f"applied CustomResourceDefinition {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
