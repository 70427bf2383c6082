"""The vendored upstream CRDs are exactly the files their SOURCES.yaml entries name."""

from __future__ import annotations

import hashlib
import re

import yaml

from tests.operator.conftest import VENDORED_CRDS

SOURCES = yaml.safe_load((VENDORED_CRDS / "SOURCES.yaml").read_text())["files"]


def test_every_vendored_crd_matches_its_recorded_checksum() -> None:
    for name, source in SOURCES.items():
        digest = hashlib.sha256((VENDORED_CRDS / name).read_bytes()).hexdigest()
        assert digest == source["sha256"], f"{name} differs from the upstream file SOURCES.yaml records"


def test_every_vendored_crd_is_listed_with_its_origin() -> None:
    assert {p.name for p in VENDORED_CRDS.glob("*.yaml")} - {"SOURCES.yaml"} == set(SOURCES)
    for name, source in SOURCES.items():
        assert source["repository"].startswith("https://github.com/"), name
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]), name
        assert source["licence"] == "Apache-2.0", name
        assert (VENDORED_CRDS / f"LICENSE-{source['licence']}").is_file(), name
