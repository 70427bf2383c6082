"""The router config's flow section: defaults, weights, and errors naming the field to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from glmserve.common.errors import ConfigError
from glmserve.router.config import load_config


def test_plan_weights_default_to_the_default_weight(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("flow: {plan_weights: {pro: 4}, default_weight: 2, replicas: 3, max_queued: 10}\n")
    flow = load_config(path).flow
    assert (flow.weight("pro"), flow.weight("free"), flow.replicas, flow.max_queued) == (4.0, 2.0, 3, 10)


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("replicas: 0", "flow.replicas"),
        ("queue_ttl_s: 0", "flow.queue_ttl_s"),
        ("max_queued: -1", "flow.max_queued"),
        ("reserved_slots: -1", "flow.reserved_slots"),
        ("reserve_hold_s: 0", "flow.reserve_hold_s"),
        ("idle_credit: -1", "flow.idle_credit"),
        ("plan_weights: {pro: 0}", "flow.plan_weights.pro"),
        ("plan_weights: {Pro: 1}", "flow.plan_weights"),
        ("queue_size: 3", "flow.queue_size"),
    ],
)
def test_invalid_settings_name_the_field(tmp_path: Path, setting: str, field: str) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(f"flow: {{{setting}}}\n")
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(path)
