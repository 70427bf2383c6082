"""Per-pool scaling on inference signals: what each pool role scales on, and the decision.

Prefill and decode saturate on different resources, so each role has its own demand: a prefill
pool is compute-bound (prompt tokens to prefill, and TTFT against its SLO), a decode pool holds
sequences (running and queued sequences, KV-cache usage, and ITL against its SLO), and a
colocated pool does both. `decide` is pure: Ray Serve's controller runs it through
`glmserve.serving.autoscaling` and the policy simulation (`benchmarks.autoscaling`) calls it
directly, so the benchmark judges the code Serve runs.

Demand is counted in replicas: how many replicas the pool needs to hold its load at the targets.
Hysteresis keeps a steady load from flapping: the pool grows when demand exceeds `scale_up_at` of
its replicas and shrinks only when demand stays below `scale_down_at` of them for
`downscale_delay_s`, and then to the middle of that band, not to its edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from glmserve.common.catalogue import ModelSpec
from glmserve.common.gpus import GpuSpec
from glmserve.common.roles import Role
from glmserve.common.slo import TTFT_THRESHOLD_S

# SGLang's GLM-4.6 TP8 figure: 50 ms per output token at ~91 concurrent sequences
# (docs/reference/glm-4.6.md); a tighter SLO buys latency with more decode replicas.
DEFAULT_ITL_SLO_S = 0.05
DEFAULT_TTFT_SLO_S = TTFT_THRESHOLD_S
DEFAULT_KV_CACHE_USAGE = 0.8
# Model FLOPs utilisation of a long prefill on a MoE model (grouped expert GEMMs, all-to-all):
# a planning figure, not a measurement; set prefillTokensPerSecond once measured.
PREFILL_MFU = 0.3
# A GLM-4.6 replica loads for minutes before it serves (docs/autoscaling.md).
DEFAULT_LEAD_S = 180.0
# Long against the noise of a steady load (its band holds it: no flapping), short against a ramp
# down: at 300 s the pools held their ramp's peak long enough to use 65% of fixed-maximum
# provisioning's replica-seconds in `benchmarks.autoscaling`, at 120 s 59% for the same SLO attainment.
DEFAULT_DOWNSCALE_DELAY_S = 120.0
# Time constants of the demand's smoothed level and slope: long enough to average Poisson noise
# (a steady load must not look like a ramp), short against a ramp of minutes.
LEVEL_TAU_S = 15.0
SLOPE_TAU_S = 30.0
# The share of its prefill rate a replica should run at: prompts queue behind each other, and
# the wait grows without bound as the share nears 1.
PREFILL_UTILIZATION = 0.5
# The share of the TTFT SLO a request may spend queued for prefill: the rest is the prefill itself,
# the KV transfer and the first decode step.
QUEUE_SHARE_OF_TTFT = 0.5


@dataclass(frozen=True, slots=True)
class PoolSignals:
    """One pool at one moment. None: not measured, which never counts as "no load" (vLLM's gauges
    vanish from Ray's export on idle engines), so a missing signal stops scale-down, not scale-up.

    Units: replicas and requests are counts, tokens are tokens, rates per second, latencies seconds.
    """

    ready: int  # replicas serving now (Serve's running replicas, not those still starting)
    queued_requests: float | None = None  # requests waiting for the pool (router's queue + engines')
    queued_prompt_tokens: float | None = None  # uncached prompt tokens of those requests
    prompt_tokens_per_s: float | None = None  # uncached prompt tokens arriving per second (prefill work)
    running: float | None = None  # sequences in the pool's engine batches, summed over replicas
    kv_cache_usage: float | None = None  # KV cache in use, mean over ready replicas, 0-1
    ttft_s: float | None = None  # recent time to first token (a high quantile)
    itl_s: float | None = None  # recent inter-token latency (a high quantile)


@dataclass(frozen=True, slots=True)
class PoolTargets:
    """Where one pool should operate, and its bounds and delays (the ModelDeployment's, validated)."""

    role: Role
    min_replicas: int  # 0: scale to zero when idle (requests then wait in the router while one starts)
    max_replicas: int
    ttft_slo_s: float
    itl_slo_s: float
    prefill_tokens_per_s: float | None  # prompt tokens one replica prefills per second; None: unknown
    running_per_replica: float  # sequences one replica should run at most
    kv_cache_usage: float  # KV fraction one replica should hold at most, 0-1
    scale_up_at: float = 1.0  # grow when demand > scale_up_at x replicas
    scale_down_at: float = 0.6  # shrink when demand < scale_down_at x replicas for downscale_delay_s
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = DEFAULT_DOWNSCALE_DELAY_S
    # How far ahead a rising demand is met: a replica serves only after it starts (loads its
    # weights), so a ramp is extrapolated by this much. 0: scale on the demand of the moment.
    lead_s: float = DEFAULT_LEAD_S

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(
                f"need 0 <= min_replicas <= max_replicas >= 1, got {self.min_replicas}, {self.max_replicas}"
            )
        if not 0 < self.scale_down_at < self.scale_up_at:
            raise ValueError(f"need 0 < scale_down_at < scale_up_at, got {self.scale_down_at}, {self.scale_up_at}")

    @property
    def prefills(self) -> bool:
        return self.role != "decode"

    @property
    def decodes(self) -> bool:
        return self.role != "prefill"

    def wire(self) -> dict[str, Any]:
        """JSON-safe (Serve's `policy_kwargs` must be)."""
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def of_wire(cls, wire: dict[str, Any]) -> PoolTargets:
        return cls(**wire)


def prefill_tokens_per_s(model: ModelSpec, gpu: GpuSpec, gpus: int) -> float | None:
    """Prompt tokens one replica of `gpus` GPUs prefills per second: 2 FLOPs per active parameter
    per token at PREFILL_MFU of their dense BF16 compute. None where the device has no figure (CPU)."""
    if gpu.bf16_flops <= 0:
        return None
    return gpus * gpu.bf16_flops * PREFILL_MFU / (2 * model.arch.active_params())


@dataclass(frozen=True, slots=True)
class Demand:
    replicas: float  # replicas needed at the targets
    signal: str  # the signal that set it
    complete: bool  # every load signal of the role was measured (else no scale-down)


def demand(signals: PoolSignals, targets: PoolTargets) -> Demand:
    """Replicas the pool needs: the largest of its role's terms.

    The primary terms count the load itself and must all be measured for a scale-down: prompt
    tokens for a prefill pool whose replicas' rate is known, sequences (running + queued) for a
    decode pool and for a prefill pool of unknown rate (its engines hold sequences too). The others
    only add: KV use (sequences longer than planned), and latencies: an SLO missed by a ratio r
    asks for r x the ready replicas, one met says nothing about spare capacity."""
    primary: dict[str, float | None] = {}
    extra: dict[str, float] = {}
    per_s = targets.prefill_tokens_per_s
    if targets.prefills and per_s is not None:
        rate, queued = signals.prompt_tokens_per_s, signals.queued_prompt_tokens
        # Keep up with arrivals, and clear the backlog within the TTFT SLO's queueing share.
        arriving = None if rate is None else rate / (per_s * PREFILL_UTILIZATION)
        backlog = None if queued is None else queued / (per_s * targets.ttft_slo_s * QUEUE_SHARE_OF_TTFT)
        primary["prompt_tokens"] = None if arriving is None or backlog is None else arriving + backlog
    if targets.decodes or per_s is None:
        running, queued_requests = signals.running, signals.queued_requests
        primary["sequences"] = (
            None
            if running is None or queued_requests is None
            else (running + queued_requests) / targets.running_per_replica
        )
    if targets.role == "prefill" and per_s is None and (signals.prompt_tokens_per_s or 0) > 0:
        # Its sequences cannot say that prompts arrive while the pool is empty (the router has the
        # decode engines prefill them locally): one replica while any do, so an empty pool wakes
        # and the last replica stays until the prompts stop.
        extra["prompts"] = 1.0
    if targets.decodes and signals.kv_cache_usage is not None:
        extra["kv_cache"] = signals.ready * signals.kv_cache_usage / targets.kv_cache_usage
    latencies = []
    if targets.prefills:
        latencies.append(("ttft", signals.ttft_s, targets.ttft_slo_s))
    if targets.decodes:
        latencies.append(("itl", signals.itl_s, targets.itl_slo_s))
    for name, seen, slo in latencies:
        if seen is not None and seen > slo:
            extra[name] = signals.ready * seen / slo
    measured = {name: value for name, value in primary.items() if value is not None} | extra
    complete = all(value is not None for value in primary.values())
    if not measured:
        return Demand(0.0, "none", complete)
    signal = max(measured, key=measured.__getitem__)
    return Demand(measured[signal], signal, complete)


@dataclass(frozen=True, slots=True)
class ScalingState:
    """What the policy remembers between calls: the direction wanted since `since_s` (for a
    scale-down, the most replicas wanted during the wait: a dip must last, a peak is kept), and
    the demand's smoothed level and slope (replicas, replicas per second) at `at_s`."""

    direction: int = 0  # +1 wants more replicas, -1 fewer, 0 neither
    since_s: float = 0.0
    wanted: int = 0
    level: float | None = None
    slope: float = 0.0
    at_s: float = 0.0

    def wire(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def of_wire(cls, wire: dict[str, Any]) -> ScalingState:
        known = {name: wire[name] for name in cls.__slots__ if name in wire}
        return cls(**known)

    def observe(self, need: float, now_s: float) -> ScalingState:
        """The level and slope after seeing demand `need` at `now_s` (exponential smoothing)."""
        if self.level is None:
            return replace(self, level=need, slope=0.0, at_s=now_s)
        dt = max(0.0, now_s - self.at_s)
        level = self.level + min(1.0, dt / LEVEL_TAU_S) * (need - self.level)
        rise = (level - self.level) / dt if dt > 0 else self.slope
        slope = self.slope + min(1.0, dt / SLOPE_TAU_S) * (rise - self.slope)
        return replace(self, level=level, slope=slope, at_s=now_s)


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int  # what the pool should head to now
    state: ScalingState
    demand: Demand


def decide(signals: PoolSignals, targets: PoolTargets, current: int, state: ScalingState, now_s: float) -> Decision:
    """The replica count one pool should head to.

    `current`: the replicas it is heading to already (ready + starting), so replicas still loading
    count as capacity and a cold start is not answered twice; and none goes while one is starting
    (`signals.ready < current`): the demand that asked for it was measured before it could serve,
    and stopping a replica whose engine is loading throws the load away. `now_s`: any monotonic
    clock (seconds).
    """
    need = demand(signals, targets)
    low, high = targets.min_replicas, targets.max_replicas
    # Only a demand measured in full is a level to extrapolate from.
    trend = state.observe(need.replicas, now_s) if need.complete else state
    idle = ScalingState(level=trend.level, slope=trend.slope, at_s=trend.at_s)
    if current == 0:
        # Scale from zero at once: requests are waiting in the router for a replica to start.
        waiting = (signals.queued_requests or 0) > 0 or need.replicas > 0
        return Decision(min(high, max(low, 1 if waiting else 0, math.ceil(need.replicas))), idle, need)
    if current < low or current > high:
        return Decision(min(high, max(low, current)), idle, need)
    # Up on the demand expected once a new replica serves; down on the demand of the moment.
    ahead = need.replicas + max(0.0, trend.slope) * targets.lead_s
    direction, wanted = 0, current
    if ahead > current * targets.scale_up_at:
        direction, wanted = 1, min(high, math.ceil(ahead / targets.scale_up_at))
    elif need.complete and need.replicas < current * targets.scale_down_at and signals.ready >= current:
        middle = (targets.scale_up_at + targets.scale_down_at) / 2
        direction, wanted = -1, max(low, math.ceil(need.replicas / middle))
    if direction == 0 or wanted == current:
        return Decision(current, idle, need)
    if state.direction != direction:
        trend = replace(trend, direction=direction, since_s=now_s, wanted=wanted)
    else:
        # Up: the latest want (load is rising); down: the most wanted during the wait.
        trend = replace(trend, wanted=wanted if direction > 0 else max(state.wanted, wanted))
    delay = targets.upscale_delay_s if direction > 0 else targets.downscale_delay_s
    if now_s - trend.since_s >= delay:
        return Decision(trend.wanted, idle, need)
    return Decision(current, trend, need)
