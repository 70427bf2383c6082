"""The per-pool scaling policy: each role's signals, hysteresis, delays, missing data, scale from zero."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from glmserve.common.autoscaling import PoolSignals, PoolTargets, ScalingState, decide, demand, prefill_tokens_per_s
from glmserve.common.catalogue import get_model
from glmserve.common.gpus import get_gpu

DECODE = PoolTargets(
    role="decode",
    min_replicas=1,
    max_replicas=10,
    ttft_slo_s=2.5,
    itl_slo_s=0.05,
    prefill_tokens_per_s=None,
    running_per_replica=64,
    kv_cache_usage=0.8,
    upscale_delay_s=10,
)  # the delays and the band at their defaults: the flapping test judges those
PREFILL = replace(DECODE, role="prefill", prefill_tokens_per_s=30_000)
COLOCATED = replace(PREFILL, role="colocated")


def decode_signals(ready: int, running: float, queued: float = 0, kv: float = 0.1, itl: float = 0.03) -> PoolSignals:
    return PoolSignals(ready=ready, queued_requests=queued, running=running, kv_cache_usage=kv, itl_s=itl)


def prefill_signals(ready: int, rate: float, queued_tokens: float = 0, ttft: float = 0.5) -> PoolSignals:
    return PoolSignals(
        ready=ready, queued_requests=0, queued_prompt_tokens=queued_tokens, prompt_tokens_per_s=rate, ttft_s=ttft
    )


def run(targets: PoolTargets, signals_at: list[PoolSignals], current: int, tick_s: float = 1.0) -> list[int]:
    """Replica counts after each tick, feeding `signals_at` in order (ready follows the decision)."""
    state, counts = ScalingState(), []
    for i, signals in enumerate(signals_at):
        decision = decide(replace(signals, ready=current), targets, current, state, i * tick_s)
        current, state = decision.replicas, decision.state
        counts.append(current)
    return counts


def test_decode_scales_on_running_and_queued_sequences() -> None:
    need = demand(decode_signals(2, running=192, queued=64), DECODE)
    assert (need.replicas, need.signal, need.complete) == (4.0, "sequences", True)


def test_decode_scales_on_kv_cache_usage_when_it_binds_first() -> None:
    need = demand(decode_signals(4, running=40, kv=0.96), DECODE)
    assert need.signal == "kv_cache" and need.replicas == pytest.approx(4 * 0.96 / 0.8)


def test_a_missed_itl_slo_asks_for_more_replicas_and_a_met_one_says_nothing() -> None:
    assert demand(decode_signals(4, running=64, itl=0.075), DECODE).replicas == pytest.approx(6)
    assert demand(decode_signals(4, running=64, itl=0.01), DECODE).signal == "sequences"


def test_prefill_scales_on_prompt_tokens_and_its_backlog_not_on_sequences() -> None:
    # 45k tokens/s arriving for replicas run at half their 30k, plus a backlog one replica clears
    # within the TTFT SLO's queueing half.
    need = demand(prefill_signals(1, rate=45_000, queued_tokens=37_500), PREFILL)
    assert need.signal == "prompt_tokens" and need.replicas == pytest.approx(3.0 + 1.0)
    assert demand(prefill_signals(2, rate=0, ttft=5.0), PREFILL).replicas == pytest.approx(4)


def test_colocated_pools_take_the_larger_of_both_roles() -> None:
    signals = PoolSignals(
        ready=2, queued_requests=0, queued_prompt_tokens=0, prompt_tokens_per_s=150_000, running=64, kv_cache_usage=0.1
    )
    assert demand(signals, COLOCATED).replicas == pytest.approx(10)
    assert demand(replace(signals, prompt_tokens_per_s=0), COLOCATED).replicas == pytest.approx(1)


def test_missing_signals_stop_scale_down_but_not_scale_up() -> None:
    idle_unknown = PoolSignals(ready=4)  # vLLM's gauges vanished: not "no load"
    assert run(DECODE, [idle_unknown] * 1000, current=4)[-1] == 4
    unknown_but_slow = PoolSignals(ready=4, itl_s=0.1)
    assert run(DECODE, [unknown_but_slow] * 20, current=4)[-1] == 8
    # KV use only adds to the sequences: without it (no Prometheus) the sequences still decide.
    counted = PoolSignals(ready=4, running=20, queued_requests=0)
    assert run(DECODE, [counted] * 400, current=4)[-1] == 1


def test_a_prefill_pool_of_unknown_rate_scales_on_its_sequences() -> None:
    """CPU node groups and `glmserve up` know no prefill rate: the engines' sequences stand in."""
    unknown = replace(PREFILL, prefill_tokens_per_s=None)
    need = demand(PoolSignals(ready=2, running=100, queued_requests=28), unknown)
    assert (need.signal, need.replicas, need.complete) == ("sequences", 2.0, True)
    assert not demand(PoolSignals(ready=2, prompt_tokens_per_s=1e6), unknown).complete


def test_scale_up_waits_for_its_delay_and_then_goes_straight_to_the_demand() -> None:
    counts = run(DECODE, [decode_signals(2, running=300)] * 12, current=2)
    assert counts[:10] == [2] * 10 and counts[10] == 5


def test_a_dip_shorter_than_the_downscale_delay_keeps_the_replicas() -> None:
    busy, quiet = decode_signals(4, running=240), decode_signals(4, running=60)
    assert DECODE.downscale_delay_s == 120
    assert run(DECODE, [busy] * 10 + [quiet] * 119 + [busy] * 10, current=4) == [4] * 139


def test_scale_down_lands_inside_the_band_so_it_does_not_come_back_up() -> None:
    counts = run(DECODE, [decode_signals(8, running=128)] * 400, current=8)
    # 2 replicas of demand: down to ceil(2 / 0.8) = 3, the middle of the 0.6-1.0 band, after 120 s.
    assert counts[119] == 8 and counts[120] == 3 and set(counts[120:]) == {3}


def test_steady_noisy_load_does_not_flap() -> None:
    """Poisson-like noise (+-15%) around 3.4 replicas of demand for two simulated hours."""
    rng = np.random.default_rng(0)
    load = 3.4 * 64 * (1 + 0.15 * rng.standard_normal(7200))
    counts = run(DECODE, [decode_signals(0, running=float(r)) for r in load], current=4)
    changes = int(np.count_nonzero(np.diff(counts)))
    assert changes <= 1, counts[::600]
    # The same load without the band and the delay flaps: the test can tell.
    twitchy = replace(DECODE, scale_down_at=0.99, upscale_delay_s=0, downscale_delay_s=0)
    flaps = run(twitchy, [decode_signals(0, running=float(r)) for r in load], current=4)
    assert np.count_nonzero(np.diff(flaps)) > 100


def test_a_ramp_is_met_one_cold_start_ahead() -> None:
    """Demand rising 1 replica a minute from 1: with a 180 s lead the pool grows while the
    demand of the moment still fits, without it only once it no longer does."""
    ramp = [decode_signals(0, running=64 * (1 + t / 60)) for t in range(240)]
    ahead = run(DECODE, ramp, current=3)
    late = run(replace(DECODE, lead_s=0), ramp, current=3)
    assert ahead.index(next(c for c in ahead if c > 3)) < 60 < late.index(next(c for c in late if c > 3))


def test_no_scale_down_while_a_replica_is_still_starting() -> None:
    """A cold start's look-ahead asked for a second replica; the demand then dips (one request
    waiting): the pool keeps both until both run, and only then waits out its downscale delay."""
    quick = replace(DECODE, min_replicas=0, downscale_delay_s=10)
    dip = decode_signals(0, running=0, queued=1, kv=0)
    state, current, counts = ScalingState(), 2, []
    for tick in range(60):
        ready = min(current, 1 if tick < 30 else 2)  # the second replica's engine loads for 30 s
        decision = decide(replace(dip, ready=ready), quick, current, state, float(tick))
        current, state = decision.replicas, decision.state
        counts.append(current)
    assert counts[:40] == [2] * 40, counts
    assert counts[40:] == [1] * 20, counts
    # Without the wait the dip would stop a replica mid-start: the test can tell.
    early = decide(replace(dip, ready=2), quick, 2, ScalingState(direction=-1, since_s=0.0, wanted=1), 20.0)
    assert early.replicas == 1


def test_bounds_hold_whatever_the_demand() -> None:
    assert run(DECODE, [decode_signals(10, running=64 * 40)] * 20, current=10)[-1] == 10
    floor = replace(DECODE, min_replicas=3)
    assert run(floor, [decode_signals(3, running=0)] * 1000, current=3)[-1] == 3


def test_scale_to_zero_after_the_delay_and_back_at_once_when_requests_queue() -> None:
    to_zero = replace(DECODE, min_replicas=0)
    counts = run(to_zero, [decode_signals(1, running=0, kv=0)] * 121, current=1)
    assert counts[-2:] == [1, 0]
    queued = PoolSignals(ready=0, queued_requests=1)  # no engine: only the router's queue is measured
    assert decide(queued, to_zero, 0, ScalingState(), 0.0).replicas == 1
    assert decide(PoolSignals(ready=0, queued_requests=0), to_zero, 0, ScalingState(), 0.0).replicas == 0


def test_targets_are_checked() -> None:
    with pytest.raises(ValueError, match="scale_down_at < scale_up_at"):
        replace(DECODE, scale_down_at=1.2)
    with pytest.raises(ValueError, match="min_replicas <= max_replicas"):
        replace(DECODE, min_replicas=11)


def test_targets_and_state_survive_their_wire_forms() -> None:
    assert PoolTargets.of_wire(COLOCATED.wire()) == COLOCATED
    state = ScalingState(-1, 12.5, 3)
    assert ScalingState.of_wire(state.wire()) == state


def test_prefill_rate_from_the_planners_figures() -> None:
    """2 x 32B active FLOPs per token at 30% of 8 x 989 TFLOPS: ~35k tokens/s; no figure on CPU."""
    rate = prefill_tokens_per_s(get_model("glm-4.6"), get_gpu("H200"), 8)
    assert rate == pytest.approx(35_300, rel=0.01)
    cpu = replace(get_gpu("H200"), bf16_flops=0.0)
    assert prefill_tokens_per_s(get_model("glm-4.6"), cpu, 1) is None


def test_a_prefill_pool_of_unknown_rate_wakes_from_zero_when_prompts_arrive_and_stays_while_they_do() -> None:
    """While the prefill pool is empty the router has the decode engines prefill locally, so the
    pool's own sequences stay at 0: the prompt tokens routed are what wake it."""
    cpu = replace(PREFILL, min_replicas=0, prefill_tokens_per_s=None)
    idle = PoolSignals(ready=0, queued_requests=0, running=0, prompt_tokens_per_s=0.0)
    prompts = replace(idle, prompt_tokens_per_s=120.0)
    assert decide(idle, cpu, 0, ScalingState(), 0.0).replicas == 0
    assert decide(prompts, cpu, 0, ScalingState(), 0.0).replicas == 1
    # Its one replica idle between prompts (no sequences) is kept while prompts arrive...
    assert run(cpu, [prompts] * 200, current=1)[-1] == 1
    # ...and goes after the delay once they stop.
    assert run(cpu, [idle] * 121, current=1)[-2:] == [1, 0]
