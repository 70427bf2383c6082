"""Fixtures of the placement tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray


@pytest.fixture(scope="module")
def own_ray() -> Iterator[None]:
    """Ray Serve LLM's deployment options start Ray implicitly, which joins whatever cluster
    /tmp/ray last recorded (a dead one hangs, and ray.shutdown leaves it recorded); every test
    that asks for them runs inside one private cluster instead."""
    ray.init(address="local", num_cpus=1, include_dashboard=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
