"""Prefill and decode pools of simulated GLM-4.6 replicas that start, serve, drain and stop, driven
by a scaling policy in simulated time, to judge a policy where real engines add no capacity.

What it models, stepped every `dt_s`:
- the router's queue: a request waits until a prefill replica's lane has room and a decode replica
  has a free sequence slot (flow control), and is dropped (503) after `queue_ttl_s`;
- prefill: compute-bound, so each replica prefills its lane first-in first-out at a fixed token rate;
- decode: continuous batching with contention: a step takes `itl(b) = itl_base_s + itl_per_seq_s x b`
  for a batch of b sequences, and every sequence gets one token per step;
- replicas: an added one serves after `cold_start_s` (loading weights), a removed one takes no new
  requests and stops when its last sequence ends (drained; a starting one is cancelled first);
- signals: what glmserve exports (router queue, prompt tokens, running sequences, KV use, TTFT, ITL)
  sampled every `tick_s`, seen by the policy `signal_lag_s` late.
A replica costs from the moment it is added until it stops (starting and draining included).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from glmserve.common.autoscaling import PoolSignals

Policy = Callable[[str, PoolSignals, int, float], int]  # (pool, signals, current, now_s) -> replicas


@dataclass(frozen=True, slots=True)
class ReplicaModel:
    prefill_tokens_per_s: float
    prefill_base_s: float
    kv_transfer_s: float
    itl_base_s: float
    itl_per_seq_s: float
    max_running: int  # vLLM's max_num_seqs: sequences one decode replica admits
    kv_tokens: int  # KV cache of one decode replica, in tokens
    cold_start_s: float

    def itl(self, batch: int) -> float:
        return self.itl_base_s + self.itl_per_seq_s * batch


@dataclass(slots=True)
class Request:
    arrival_s: float
    prompt: int
    output: int
    first_token_s: float | None = None
    done_s: float | None = None
    dropped: bool = False
    prefill_left: float = 0.0
    decode_ready_s: float = 0.0
    tokens: float = 0.0

    @property
    def ttft_s(self) -> float:
        assert self.first_token_s is not None
        return self.first_token_s - self.arrival_s

    @property
    def itl_s(self) -> float:
        """Mean inter-token latency (TPOT) over the request's output."""
        assert self.first_token_s is not None and self.done_s is not None
        return (self.done_s - self.first_token_s) / max(1, self.output - 1)


@dataclass(slots=True)
class Replica:
    added_s: float
    ready_s: float
    stopped_s: float | None = None
    draining: bool = False
    lane: deque[Request] = field(default_factory=deque)  # prefill: prompts to prefill, in order
    running: list[Request] = field(default_factory=list)  # decode: sequences, incl. those arriving

    def serving(self, now: float) -> bool:
        return self.stopped_s is None and not self.draining and now >= self.ready_s

    def idle(self) -> bool:
        return not self.lane and not self.running


class SimPool:
    def __init__(self, name: str, model: ReplicaModel, replicas: int) -> None:
        self.name = name
        self.model = model
        self.replicas = [Replica(0.0, 0.0) for _ in range(replicas)]

    def live(self) -> list[Replica]:
        """Replicas counted by the scaler: ready or starting, not draining."""
        return [r for r in self.replicas if r.stopped_s is None and not r.draining]

    def scale_to(self, target: int, now: float) -> None:
        live = self.live()
        for _ in range(target - len(live)):
            self.replicas.append(Replica(now, now + self.model.cold_start_s))
        # Serve cancels starting replicas first, then removes the least loaded.
        by_cost = sorted(live, key=lambda r: (now >= r.ready_s, len(r.lane) + len(r.running)))
        for replica in by_cost[: max(0, len(live) - target)]:
            replica.draining = True
            if now < replica.ready_s or replica.idle():
                replica.stopped_s = now

    def replica_seconds(self, end_s: float) -> float:
        return sum((r.stopped_s if r.stopped_s is not None else end_s) - r.added_s for r in self.replicas)

    def count(self, now: float) -> int:
        return len(self.live())


class Fleet:
    """A prefill and a decode pool behind the router's queue."""

    def __init__(
        self, model: ReplicaModel, prefill: int, decode: int, *, queue_ttl_s: float, dt_s: float, lane_depth: int = 2
    ) -> None:
        self.model = model
        self.pools = {"prefill": SimPool("prefill", model, prefill), "decode": SimPool("decode", model, decode)}
        self.queue: deque[Request] = deque()
        self.requests: list[Request] = []
        self.queue_ttl_s = queue_ttl_s
        self.dt_s = dt_s
        self.lane_depth = lane_depth
        self.arrived_tokens: deque[tuple[float, int]] = deque()
        self.first_tokens: deque[tuple[float, float]] = deque()  # (time, ttft)

    def arrive(self, request: Request) -> None:
        request.prefill_left = request.prompt
        self.requests.append(request)
        self.queue.append(request)
        self.arrived_tokens.append((request.arrival_s, request.prompt))

    def step(self, now: float) -> None:
        self._expire(now)
        self._dispatch(now)
        self._prefill(now)
        self._decode(now)
        for pool in self.pools.values():
            for replica in pool.replicas:
                if replica.draining and replica.stopped_s is None and replica.idle():
                    replica.stopped_s = now

    def _expire(self, now: float) -> None:
        while self.queue and now - self.queue[0].arrival_s > self.queue_ttl_s:
            self.queue.popleft().dropped = True

    def _dispatch(self, now: float) -> None:
        prefill = [r for r in self.pools["prefill"].replicas if r.serving(now)]
        decode = [r for r in self.pools["decode"].replicas if r.serving(now)]
        while self.queue and prefill and decode:
            lane = min(prefill, key=lambda r: len(r.lane))
            slot = min(decode, key=lambda r: len(r.running))
            if len(lane.lane) >= self.lane_depth or len(slot.running) >= self.model.max_running:
                return
            request = self.queue.popleft()
            request.decode_ready_s = float("inf")
            lane.lane.append(request)
            slot.running.append(request)  # the slot is the router's booking from now on

    def _prefill(self, now: float) -> None:
        rate = self.model.prefill_tokens_per_s
        for replica in self.pools["prefill"].replicas:
            budget = self.dt_s
            while replica.lane and budget > 0:
                head = replica.lane[0]
                base = self.model.prefill_base_s if head.prefill_left == head.prompt else 0.0  # once per prompt
                need = head.prefill_left / rate + base
                if need > budget:
                    head.prefill_left -= max(0.0, budget - base) * rate
                    break
                budget -= need
                replica.lane.popleft()
                head.decode_ready_s = now + (self.dt_s - budget) + self.model.kv_transfer_s

    def _decode(self, now: float) -> None:
        for replica in self.pools["decode"].replicas:
            active = [r for r in replica.running if r.decode_ready_s <= now]
            if not active:
                continue
            itl = self.model.itl(len(active))
            for request in active:
                if request.first_token_s is None:
                    request.first_token_s = max(now, request.decode_ready_s) + itl
                    self.first_tokens.append((request.first_token_s, request.ttft_s))
                request.tokens += self.dt_s / itl
                if request.tokens >= request.output:
                    request.done_s = now + self.dt_s
            replica.running = [r for r in replica.running if r.done_s is None]

    def signals(self, now: float, window_s: float) -> dict[str, PoolSignals]:
        """What glmserve's metrics say now: the router's queue, prompt tokens arriving over the
        window, p90 TTFT over the window; decode: running sequences, KV use, p90 ITL of the batch."""
        while self.arrived_tokens and self.arrived_tokens[0][0] < now - window_s:
            self.arrived_tokens.popleft()
        while self.first_tokens and self.first_tokens[0][0] < now - window_s:
            self.first_tokens.popleft()
        queued = float(len(self.queue))
        queued_tokens = float(sum(r.prompt for r in self.queue))
        prefill = [r for r in self.pools["prefill"].replicas if r.serving(now)]
        decode = [r for r in self.pools["decode"].replicas if r.serving(now)]
        ttfts = [t for _, t in self.first_tokens]
        batches = [len(r.running) for r in decode]
        kv = [sum(q.prompt + q.tokens for q in r.running) / self.model.kv_tokens for r in decode]
        itls = [self.model.itl(b) for b in batches for _ in range(b)]
        return {
            "prefill": PoolSignals(
                ready=len(prefill),
                queued_requests=queued,
                queued_prompt_tokens=queued_tokens + sum(q.prefill_left for r in prefill for q in r.lane),
                # Not measured until a whole window has passed.
                prompt_tokens_per_s=sum(n for _, n in self.arrived_tokens) / window_s if now >= window_s else None,
                ttft_s=float(np.percentile(ttfts, 90)) if ttfts else None,
            ),
            "decode": PoolSignals(
                ready=len(decode),
                queued_requests=queued,
                running=float(sum(batches)),
                kv_cache_usage=float(np.mean(kv)) if kv else None,
                itl_s=float(np.percentile(itls, 90)) if itls else None,
            ),
        }
