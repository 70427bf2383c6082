"""The per-pool scaling policy against fixed provisioning, on simulated GLM-4.6 P/D pools.

    python -m benchmarks.autoscaling [--seed 0]

Engines on 2 CPU cores add no capacity when scaled, so the policy is judged in simulation
(`benchmarks/sim/fleet.py`) calling `glmserve.common.autoscaling.decide`, the function Ray Serve's
controller runs. Replicas are GLM-4.6 BF16 on 8 x H200 (TP8), calibrated on docs/reference/glm-4.6.md:
- decode step: 14.8 ms at 1 sequence, 50 ms at ~91 (SGLang TP8): itl(b) = 14.4 ms + 0.39 ms x b;
- prefill: 2 FLOPs per active parameter per token at 30% of 8 x 989 BF16 TFLOPS (~35k tokens/s);
- KV cache: 8 x 141 GB x 0.9 - 710 GB of weights - runtime, at 368 KiB per token (~780k tokens);
- a replica loads for 3 minutes before it serves (cold start); the router drops after 30 s queued;
- the policy sees signals 35 s late (the chart's 30 s scrape interval + Ray's 5 s Prometheus fetch).
Load: Poisson arrivals, prompts ~2,000 tokens and outputs ~250 (log-normal); 1x = 8 requests/s.
Scenario: 5 minutes at 1x, 1x -> 4x over 10 minutes and back over 10, then 10 minutes at 1x.
Compared in the same run on the same arrivals: autoscaled (min -> max), fixed at min, fixed at max.
Bounds: prefill 1-3, decode 3-8. The minimum must carry the load a ramp reaches within one cold
start (decode at 2 replicas saturates at ~1.8x, reached before a replica asked for at 1x serves).
The policy runs with the ModelDeployment's default targets, except decode's sequences per replica,
set as an operator would from this model: 80% of the batch whose step meets the ITL SLO; a
second autoscaled run sets downscaleDelaySeconds to 300 s (the default before it became 120 s).
SLO: TTFT <= 2.5 s and mean ITL <= 50 ms; a dropped request misses it.
Goal: autoscaled within 5% of fixed-max attainment at <= 60% of its replica-seconds, 0 dropped.
Writes benchmarks/results/autoscaling.{json,md,png}.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results_io import markdown_table, write
from benchmarks.sim.fleet import Fleet, ReplicaModel, Request
from glmserve.common.autoscaling import (
    DEFAULT_ITL_SLO_S,
    DEFAULT_KV_CACHE_USAGE,
    DEFAULT_TTFT_SLO_S,
    PoolSignals,
    PoolTargets,
    ScalingState,
    decide,
    prefill_tokens_per_s,
)
from glmserve.common.catalogue import get_model
from glmserve.common.gpus import get_gpu

MODEL = ReplicaModel(
    prefill_tokens_per_s=prefill_tokens_per_s(get_model("glm-4.6"), get_gpu("H200"), 8) or 0.0,
    prefill_base_s=0.02,
    kv_transfer_s=0.02,
    itl_base_s=0.0144,
    itl_per_seq_s=0.00039,
    max_running=128,
    kv_tokens=780_000,
    cold_start_s=180.0,
)
BASE_RATE = 8.0  # requests/s at 1x
PROMPT_MEAN, OUTPUT_MEAN = 2000, 250
PHASES_S = (300.0, 600.0, 600.0, 600.0)  # 1x, ramp up, ramp down, 1x
PEAK = 4.0
DT_S, TICK_S, WINDOW_S, SIGNAL_LAG_S, QUEUE_TTL_S = 0.1, 1.0, 30.0, 35.0, 30.0
BOUNDS = {"prefill": (1, 3), "decode": (3, 8)}
# A second autoscaled run with this downscaleDelaySeconds instead of the default: the former
# default, which held the ramp's peak replicas longer on the way down.
FORMER_DOWNSCALE_S = 300.0
# Decode's target batch: 80% of the sequences whose step time meets the ITL SLO.
RUNNING_TARGET = 0.8 * (DEFAULT_ITL_SLO_S - MODEL.itl_base_s) / MODEL.itl_per_seq_s


def targets(pool: str, downscale_delay_s: float | None = None) -> PoolTargets:
    """The ModelDeployment's defaults (downscaleDelaySeconds too unless given) but decode's batch."""
    low, high = BOUNDS[pool]
    scaling = PoolTargets(
        role="prefill" if pool == "prefill" else "decode",
        min_replicas=low,
        max_replicas=high,
        ttft_slo_s=DEFAULT_TTFT_SLO_S,
        itl_slo_s=DEFAULT_ITL_SLO_S,
        prefill_tokens_per_s=MODEL.prefill_tokens_per_s,
        running_per_replica=RUNNING_TARGET,
        kv_cache_usage=DEFAULT_KV_CACHE_USAGE,
    )
    return scaling if downscale_delay_s is None else replace(scaling, downscale_delay_s=downscale_delay_s)


def load(t: float) -> float:
    """The load multiple at time t."""
    warm, up, down, _ = PHASES_S
    if t < warm:
        return 1.0
    if t < warm + up:
        return 1.0 + (PEAK - 1.0) * (t - warm) / up
    if t < warm + up + down:
        return PEAK - (PEAK - 1.0) * (t - warm - up) / down
    return 1.0


def arrivals(seed: int) -> list[Request]:
    """Poisson arrivals by thinning at the peak rate; log-normal prompt and output lengths."""
    rng = np.random.default_rng(seed)
    end, peak_rate = sum(PHASES_S), BASE_RATE * PEAK
    times = np.cumsum(rng.exponential(1 / peak_rate, int(end * peak_rate * 1.2)))
    times = times[times < end]
    times = times[rng.random(len(times)) < np.array([load(t) for t in times]) / PEAK]
    sigma = 0.5
    prompts = rng.lognormal(np.log(PROMPT_MEAN) - sigma**2 / 2, sigma, len(times)).astype(int) + 16
    outputs = rng.lognormal(np.log(OUTPUT_MEAN) - sigma**2 / 2, sigma, len(times)).astype(int) + 2
    return [Request(float(t), int(p), int(o)) for t, p, o in zip(times, prompts, outputs, strict=True)]


Scaler = Callable[[str, PoolSignals, int, float], int]


def policy_scaler(downscale_delay_s: float | None = None) -> Scaler:
    """`decide` per pool, holding its state between ticks as Serve's controller does."""
    pool_targets = {pool: targets(pool, downscale_delay_s) for pool in BOUNDS}
    states = {pool: ScalingState() for pool in BOUNDS}

    def scale(pool: str, signals: PoolSignals, current: int, now: float) -> int:
        decision = decide(signals, pool_targets[pool], current, states[pool], now)
        states[pool] = decision.state
        return decision.replicas

    return scale


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    attainment: float
    replica_seconds: float
    dropped: int
    requests: int
    ttft_p90_s: float
    itl_p90_s: float
    timeline: dict[str, list[float]]


def run(name: str, requests: list[Request], start: dict[str, int], scaler: Scaler | None) -> Outcome:
    fleet = Fleet(MODEL, start["prefill"], start["decode"], queue_ttl_s=QUEUE_TTL_S, dt_s=DT_S)
    pending = sorted((Request(r.arrival_s, r.prompt, r.output) for r in requests), key=lambda r: r.arrival_s)
    end = sum(PHASES_S)
    history: list[dict[str, PoolSignals]] = []
    timeline: dict[str, list[float]] = {"t": [], "load": [], "prefill": [], "decode": []}
    i, step, per_tick = 0, 0, round(TICK_S / DT_S)
    while (now := step * DT_S) < end or fleet.queue or any(r.done_s is None and not r.dropped for r in fleet.requests):
        while i < len(pending) and pending[i].arrival_s <= now:
            fleet.arrive(pending[i])
            i += 1
        fleet.step(now)
        if step % per_tick == 0:
            history.append(fleet.signals(now, WINDOW_S))
            seen = history[max(0, len(history) - 1 - round(SIGNAL_LAG_S / TICK_S))]
            for pool_name, pool in fleet.pools.items():
                if scaler is not None:
                    pool.scale_to(scaler(pool_name, seen[pool_name], pool.count(now), now), now)
            timeline["t"].append(now)
            timeline["load"].append(load(now))
            timeline["prefill"].append(float(fleet.pools["prefill"].count(now)))
            timeline["decode"].append(float(fleet.pools["decode"].count(now)))
        step += 1
    served = [r for r in fleet.requests if not r.dropped]
    good = sum(r.ttft_s <= DEFAULT_TTFT_SLO_S and r.itl_s <= DEFAULT_ITL_SLO_S for r in served)
    return Outcome(
        name=name,
        attainment=good / len(fleet.requests),
        replica_seconds=sum(pool.replica_seconds(now) for pool in fleet.pools.values()),
        dropped=sum(r.dropped for r in fleet.requests),
        requests=len(fleet.requests),
        ttft_p90_s=float(np.percentile([r.ttft_s for r in served], 90)),
        itl_p90_s=float(np.percentile([r.itl_s for r in served], 90)),
        timeline=timeline,
    )


def report(outcomes: list[Outcome], seed: int) -> dict[str, Any]:
    best = next(o for o in outcomes if o.name == "fixed-max")
    goal = {
        auto.name: {
            "attainment_within_5pct_of_fixed_max": auto.attainment >= best.attainment - 0.05,
            "replica_seconds_share_of_fixed_max": auto.replica_seconds / best.replica_seconds,
            "replica_seconds_at_most_60pct": auto.replica_seconds <= 0.6 * best.replica_seconds,
            "zero_dropped": auto.dropped == 0,
        }
        for auto in outcomes
        if auto.name.startswith("autoscaled")
    }
    rows = [{k: v for k, v in vars_of(o).items() if k != "timeline"} for o in outcomes]
    return {
        "seed": seed,
        "model": vars_of(MODEL),
        "running_target": RUNNING_TARGET,
        "bounds": BOUNDS,
        "outcomes": rows,
        "goal": goal,
        "timelines": {o.name: o.timeline for o in outcomes},
    }


def vars_of(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def markdown(data: dict[str, Any]) -> str:
    headers = [
        "provisioning",
        "SLO attainment",
        "replica-seconds",
        "vs fixed-max",
        "dropped",
        "requests",
        "TTFT p90 (s)",
        "ITL p90 (ms)",
    ]
    best = next(o for o in data["outcomes"] if o["name"] == "fixed-max")["replica_seconds"]
    rows = [
        [
            o["name"],
            f"{o['attainment']:.1%}",
            round(o["replica_seconds"]),
            f"{o['replica_seconds'] / best:.0%}",
            o["dropped"],
            o["requests"],
            o["ttft_p90_s"],
            o["itl_p90_s"] * 1000,
        ]
        for o in data["outcomes"]
    ]
    doc = (__doc__ or "").split("\n\n", 2)[2].split("Writes")[0]
    verdicts = "".join(
        f"- {name}: within 5% of fixed-max attainment **{g['attainment_within_5pct_of_fixed_max']}**;"
        f" replica-seconds {g['replica_seconds_share_of_fixed_max']:.0%} of fixed-max (<= 60%:"
        f" **{g['replica_seconds_at_most_60pct']}**); 0 dropped **{g['zero_dropped']}**\n"
        for name, g in data["goal"].items()
    )
    return (
        "# Autoscaling: per-pool policy vs fixed provisioning (simulated GLM-4.6 P/D pools)\n\n"
        f"`python -m benchmarks.autoscaling --seed {data['seed']}`\n\n{doc}\n"
        + markdown_table(headers, rows)
        + "\nGoal:\n"
        + verdicts
    )


def plot(data: dict[str, Any]) -> Callable[[Path], None]:
    def draw(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        for name, line in data["timelines"].items():
            minutes = np.array(line["t"]) / 60
            axes[0].plot(minutes, line["decode"], label=f"decode, {name}")
            axes[1].plot(minutes, line["prefill"], label=f"prefill, {name}")
        auto = data["timelines"]["autoscaled"]
        twin = axes[0].twinx()
        twin.plot(np.array(auto["t"]) / 60, auto["load"], "k:", label="load (x)")
        twin.set_ylabel("load (x)")
        axes[0].set_ylabel("decode replicas")
        axes[1].set_ylabel("prefill replicas")
        axes[1].set_xlabel("simulated minutes")
        for ax in axes:
            ax.legend(fontsize=7, loc="upper left")
        fig.suptitle("Replicas (ready or starting) under a 1x -> 4x -> 1x ramp, 3-minute cold start")
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    return draw


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    requests = arrivals(args.seed)
    low = {pool: b[0] for pool, b in BOUNDS.items()}
    high = {pool: b[1] for pool, b in BOUNDS.items()}
    outcomes = [
        run("autoscaled", requests, low, policy_scaler()),
        run(f"autoscaled, {FORMER_DOWNSCALE_S:.0f} s delay", requests, low, policy_scaler(FORMER_DOWNSCALE_S)),
        run("fixed-min", requests, low, None),
        run("fixed-max", requests, high, None),
    ]
    data = report(outcomes, args.seed)
    text = markdown(data)
    print(text)
    write("autoscaling", data, text, plot(data))


if __name__ == "__main__":
    main(sys.argv[1:])
