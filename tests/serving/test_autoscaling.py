"""glmserve's pool policy inside Ray Serve's own autoscaling config and context (no cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ray.serve._private.common import DeploymentID
from ray.serve.autoscaling_policy import (
    PrometheusSample,
    PrometheusScalar,
    PrometheusVector,
    _apply_autoscaling_config,  # what Serve's controller wraps a custom policy in
)
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from glmserve.common.autoscaling import PoolTargets
from glmserve.common.config import PoolConfig, ServeConfig
from glmserve.serving import app
from glmserve.serving.autoscaling import POLICY, STATE_KEY, PoolPolicy, queries, signals_of
from glmserve.serving.models import ResolvedModel
from glmserve.serving.topology import plan

TARGETS = PoolTargets(
    role="decode",
    min_replicas=1,
    max_replicas=4,
    ttft_slo_s=2.5,
    itl_slo_s=0.05,
    prefill_tokens_per_s=None,
    running_per_replica=8,
    kv_cache_usage=0.8,
    upscale_delay_s=0,
)


def context(
    running: int,
    target: int,
    *,
    ongoing: float = 0,
    state: dict[str, Any] | None = None,
    now: float = 100.0,
    config: AutoscalingConfig | None = None,
) -> AutoscalingContext:
    config = config or AutoscalingConfig(min_replicas=1, max_replicas=4)
    return AutoscalingContext(
        deployment_id=DeploymentID("Decode:m"),
        deployment_name="Decode:m",
        app_name="glmserve",
        current_num_replicas=running,
        target_num_replicas=target,
        running_replicas=[],
        total_num_requests=ongoing,
        total_queued_requests=0.0,
        aggregated_metrics={},
        raw_metrics={},
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=4,
        policy_state=state or {},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=now,
        config=config,
    )


def test_the_queries_read_the_routers_pool_gauges_and_the_ingress() -> None:
    decode = queries("glm-4.6", "Decode", "decode")
    pool = 'model="glm-4.6",role="decode"'
    assert decode["queued_requests"] == (
        f'sum(glmserve_router_pool_requests{{{pool},state="queued"}}) + '
        f'max(glmserve_router_pool_requests{{{pool},state="waiting"}})'
    )
    assert decode["running"] == f'max(glmserve_router_pool_requests{{{pool},state="running"}})'
    assert decode["queued_prompt_tokens"] == f"sum(glmserve_router_pool_uncached_prompt_tokens{{{pool}}})"
    assert 'cached="false"' in decode["prompt_tokens_per_s"]
    assert decode["kv_cache_usage"] == f"max(glmserve_router_pool_kv_cache_usage{{{pool}}})"
    assert "glmserve_ingress_inter_token_latency_seconds_bucket" in decode["itl_s"]
    # The router knows a colocated engine as a decode worker; a prefill pool reads its own gauges.
    assert queries("glm-4.6", "Engine", "colocated") == decode
    assert 'role="prefill"' in queries("glm-4.6", "Prefill", "prefill")["queued_prompt_tokens"]


def test_signals_read_each_querys_sample_and_treat_absent_series_as_unmeasured() -> None:
    by_signal = queries("m", "Decode", "decode")
    results = {
        by_signal["queued_requests"]: PrometheusScalar(5.0, 0.0),
        by_signal["running"]: PrometheusVector((PrometheusSample({}, 20.0, 0.0),)),
        by_signal["kv_cache_usage"]: PrometheusVector(()),  # no router scraped yet
    }
    signals = signals_of(context(2, 2, ongoing=7), results, by_signal)
    assert (signals.ready, signals.queued_requests, signals.running, signals.kv_cache_usage) == (2, 5.0, 20.0, None)
    kv = {**results, by_signal["kv_cache_usage"]: PrometheusVector((PrometheusSample({}, 0.4, 0.0),))}
    assert signals_of(context(2, 2), kv, by_signal).kv_cache_usage == 0.4
    # No Prometheus at all: Serve's own count stands in for the running sequences and the queue.
    alone = signals_of(context(2, 2, ongoing=7), None, by_signal)
    assert (alone.running, alone.queued_requests, alone.itl_s) == (7.0, 0.0, None)


def test_serve_builds_the_policy_from_the_deployment_config_and_it_scales_on_the_context() -> None:
    cfg = ServeConfig(
        disaggregated=True,
        decode=PoolConfig(replicas=1, max_replicas=4),
        max_ongoing_requests=8,
        autoscaling_policy="glmserve",
    )
    assert app.pool_targets(cfg.model_copy(update={"autoscaling_policy": "serve"}), "decode") is None
    targets = app.pool_targets(cfg, "decode")
    assert targets is not None and (targets.running_per_replica, targets.max_replicas) == (8, 4)
    assert app.pool_targets(cfg, "prefill") is None  # a fixed count keeps Serve's num_replicas

    scaling = plan_config(targets)
    assert scaling["policy"]["policy_function"] == POLICY and scaling["downscale_delay_s"] == 0
    config = AutoscalingConfig(**scaling)  # Ray's own validation; it imports and pickles the policy
    policy_cls = config.policy.get_policy()
    policy = policy_cls(**config.policy.policy_kwargs)
    assert isinstance(policy, PoolPolicy)
    # 30 sequences in flight at 8 per replica, no Prometheus: after the upscale delay, 4 replicas
    # (the maximum); Serve's own keys in the state are kept.
    replicas, state = policy(context(1, 1, ongoing=30, state={"serve_internal": 1}))
    assert replicas == 1 and state["serve_internal"] == 1 and state[STATE_KEY]["direction"] == 1
    replicas, state = policy(context(1, 1, ongoing=30, state=state, now=100 + targets.upscale_delay_s))
    assert replicas == 4
    # Through the wrapper Serve's controller puts around a custom policy (factors, its own delays,
    # set to 0 here): the decision passes unchanged, on the same schedule.
    wrapped = _apply_autoscaling_config(policy)
    replicas, state = wrapped(context(1, 1, ongoing=30, config=config))
    assert replicas == 1
    assert wrapped(context(1, 1, ongoing=30, state=state, now=110, config=config))[0] == 4


def plan_config(targets: PoolTargets) -> dict[str, Any]:
    from glmserve.serving.topology import PoolSpec, TopologySpec

    pool = PoolSpec("decode", 1, 4, 8, 8, {}, "cpu", scaling=targets)
    prefill = PoolSpec("prefill", 1, 1, 8, 8, {}, "cpu")
    spec = TopologySpec("m", "/m", 1024, False, 0, (prefill, pool), 50)
    engines = plan(spec).engines
    assert "num_replicas" in engines["prefill"].llm_config.deployment_config
    return dict(engines["decode"].llm_config.deployment_config["autoscaling_config"])


@pytest.mark.parametrize("flag", ["--decode-max-replicas", "--max-replicas"])
def test_up_flags_reach_the_pool(flag: str) -> None:
    from glmserve.cli.main import parser, serve_config

    argv = ["up", flag, "3", "--itl-slo-s", "0.04", "--autoscaling-policy", "glmserve"]
    argv += ["--disaggregated"] if "decode" in flag else []
    cfg = serve_config(parser().parse_args(argv))
    role = "decode" if "decode" in flag else "colocated"
    targets = app.pool_targets(cfg, role)
    assert targets is not None and (targets.max_replicas, targets.itl_slo_s) == (3, 0.04)


def test_up_flags_set_the_downscale_delay_scale_from_zero_and_the_queues_ttl() -> None:
    from glmserve.cli.main import parser, serve_config
    from glmserve.serving.local_router import local_flow

    argv = ["up", "--replicas", "0", "--max-replicas", "2", "--autoscaling-policy", "glmserve", "--router", "on"]
    cfg = serve_config(parser().parse_args([*argv, "--downscale-delay-s", "15", "--queue-ttl-s", "240"]))
    targets = app.pool_targets(cfg, "colocated")
    assert targets is not None and (targets.min_replicas, targets.downscale_delay_s) == (0, 15)
    # The router holds the model's requests while its pool is empty, for up to the TTL; the ingress
    # waits on the router a little longer than that.
    assert local_flow(cfg, "m") == {"queue_ttl_s": 240, "max_queued": 128, "scale_from_zero": ["m"]}
    model = ResolvedModel("m", Path("/m"), 1024, False)
    assert plan(app.topology_spec(model, cfg, "cpu", "127.0.0.1:1")).settings.route_timeout_s == 245
    disaggregated = ["up", "--disaggregated", "--decode-max-replicas", "3", "--decode-downscale-delay-s", "20"]
    cfg = serve_config(parser().parse_args([*disaggregated, "--autoscaling-policy", "glmserve"]))
    targets = app.pool_targets(cfg, "decode")
    assert targets is not None and targets.downscale_delay_s == 20
    assert local_flow(cfg, "m") == {"queue_ttl_s": 30, "max_queued": 3 * 64}
