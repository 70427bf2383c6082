"""The committed stubs are exactly what router.proto generates (regenerate with
`python -m glmserve.router.proto.generate`)."""

from __future__ import annotations

from pathlib import Path

from glmserve.router.proto import generate


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    for fresh in generate.generate(tmp_path):
        committed = generate.PROTO.with_name(fresh.name)
        assert committed.read_bytes() == fresh.read_bytes(), f"{committed} is stale: regenerate the stubs"
