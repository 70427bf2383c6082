"""The metric names: unique, each owned by one component, and what glmserve exports lints clean."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from glmserve.common import metrics as m


def test_names_are_unique_and_each_has_an_owner() -> None:
    specs = m.all_specs()
    assert len({s.name for s in specs}) == len(specs)
    assert {m.component(s) for s in specs} == {"ingress", "router", "limits", "engine", "serve"}


def test_every_glmserve_metric_passes_promtool() -> None:
    """Router and limits metrics included, whether or not their component runs yet."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/install.sh --test installs it (apt package prometheus)")
    registry = CollectorRegistry()
    owned = [s for s in m.all_specs() if s.name.startswith("glmserve_")]
    for spec in owned:
        family = {"counter": m.counter, "gauge": m.gauge, "histogram": m.histogram}[spec.kind](spec, registry)
        sample = family.labels(*("x" for _ in spec.labels)) if spec.labels else family
        if spec.kind == "histogram":
            sample.observe(0.1)  # type: ignore[union-attr]
        elif spec.kind == "gauge":
            sample.set(1)  # type: ignore[union-attr]
        else:
            sample.inc()  # type: ignore[union-attr]
    text = generate_latest(registry)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, check=False)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    for spec in owned:
        assert f"# TYPE {spec.name} {spec.kind}\n".encode() in text, spec.name


def test_metrics_read_from_ray_cannot_be_created_here() -> None:
    with pytest.raises(AssertionError, match="exported by engine"):
        m.gauge(m.VLLM_KV_CACHE_USAGE, CollectorRegistry())
