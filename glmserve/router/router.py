"""The router's state and decisions, without gRPC: workers, the KV index fed by their events, the
two pool profiles, and the requests in flight (for load). Single-threaded by design: the server
calls it from one event loop, so there are no locks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
from prometheus_client import Counter

from glmserve.common.errors import OverloadedError
from glmserve.router.config import RouterConfig
from glmserve.router.disaggregation import Disaggregation
from glmserve.router.estimates import EngineEvents, RoutingHistory
from glmserve.router.events import Event
from glmserve.router.flow import FlowController, FlowMetrics
from glmserve.router.hashing import DEFAULT_SEED, BlockHasher
from glmserve.router.index import KVIndex
from glmserve.router.metrics import RouterMetrics
from glmserve.router.pipeline import Pick, Profile, Rejected
from glmserve.router.plugins.base import PrefixEstimate, RouteContext
from glmserve.router.shards import shard_of
from glmserve.router.types import Decision, Load, Role, RouteQuery, Stage, Target, Usage, WorkerInfo
from glmserve.router.workers import Registry, Worker

RETRY_AFTER_S = 1.0


@dataclass(frozen=True, slots=True)
class Booking:
    tenant: str
    model: str
    prefill: str | None
    decode: str
    prefill_tokens: int  # uncached tokens the prefilling worker owes until the first token
    expires_at: float

    @property
    def prefiller(self) -> str:
        return self.prefill or self.decode


class Router:
    def __init__(
        self,
        config: RouterConfig,
        metrics: RouterMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics or RouterMetrics()
        self.registry = Registry(config.workers.lease_s, config.workers.forget_after_s, clock)
        self.index = KVIndex()
        self.hasher = BlockHasher(config.hashing.seed or DEFAULT_SEED)
        self.estimate: PrefixEstimate = (
            RoutingHistory(config.approximate)
            if config.policy == "approximate"
            else EngineEvents(self.index, config.events.expect_s)
        )
        self._clock = clock
        self._decode = Profile("decode", config.profile("decode"), config, self.metrics)
        prefill = Profile("prefill", config.profile("prefill"), config, self.metrics)
        self._disaggregation = Disaggregation(prefill, config.disaggregation.min_remote_prefill_tokens)
        self._bookings: dict[str, Booking] = {}
        self._ordered: list[Worker] | None = None
        self._unready: set[str] = set()  # workers whose KV events are not replayed yet
        self._event_counters: dict[type, Counter] = {}
        # (model, role) of every worker ever registered, and the decode pools that may be empty
        self._pools: set[tuple[str, Role]] = {(model, "decode") for model in config.flow.scale_from_zero}
        self._costed: set[tuple[str, Role, str]] = set()  # the workers' cost series now exported
        self._cold_since: dict[str, float] = {}  # model -> when a request first found its pool empty
        # Requests wait here for this replica's share of the engines (`free`), then are routed.
        self.flow = FlowController(config.flow, self, FlowMetrics(self.metrics.registry, config.flow.metrics_tenants))
        for static in config.workers.static:
            self.register(static.info(), Load(), static=True)

    # -- workers --------------------------------------------------------------------------

    def owns(self, worker_id: str) -> bool:
        """Whether the worker is in this replica's shard (always, unsharded)."""
        shard = self.config.shard
        return shard.count == 1 or shard_of(worker_id, shard.count) == shard.index

    def register(self, info: WorkerInfo, load: Load, *, static: bool = False) -> bool:
        """True when the worker is new or changed: its index starts empty and its events must be
        (re)subscribed. Another shard's worker is not registered (nor its events followed)."""
        if not self.owns(info.worker_id):
            return False
        changed = self.registry.register(info, load, static=static)
        if info.role == "decode" and (since := self._cold_since.pop(info.model, None)) is not None:
            cold_start = self._clock() - since
            self.metrics.cold_start.labels(info.model).observe(cold_start)
            self.metrics.last_cold_start.labels(info.model).set(cold_start)
        if changed:
            self.index.detach(info.worker_id)
            self.index.attach(info.worker_id, info.kv_cache_blocks)
            self.set_index_ready(info.worker_id, not info.kv_events_endpoint)
            self._ordered = None
        self.flow.poke(info.model)
        return changed

    def heartbeat(self, worker_id: str, load: Load) -> None:
        if self.owns(worker_id):
            self.registry.heartbeat(worker_id, load)
            self.flow.poke(self.registry.workers[worker_id].info.model)  # its lease may have revived

    def deregister(self, worker_id: str) -> bool:
        self.index.detach(worker_id)
        self._unready.discard(worker_id)
        self._ordered = None
        return self.registry.deregister(worker_id)

    def apply_events(self, worker_id: str, events: Iterable[Event]) -> None:
        if worker_id not in self.registry.workers:
            return
        counted = self._event_counters
        for event in events:
            self.index.apply(worker_id, event)
            kind = type(event)
            if kind not in counted:  # labels() per event cost as much as indexing a small one
                counted[kind] = self.metrics.kv_events.labels(kind.__name__)
            counted[kind].inc()

    def reset_index(self, worker_id: str) -> None:
        """The engine restarted (its event sequence started over): what it held is gone."""
        if worker_id in self.registry.workers:
            self.index.clear(worker_id)

    def set_index_ready(self, worker_id: str, ready: bool) -> None:
        worker = self.registry.workers.get(worker_id)
        if worker is not None:
            worker.index_ready = ready
            if ready:
                self._unready.discard(worker_id)
            else:
                self._unready.add(worker_id)

    def sweep(self) -> list[str]:
        """Forgets silent workers and never-completed requests; refreshes gauges. Returns the ids of
        the workers dropped, whose event subscriptions should stop."""
        gone = self.registry.forget_silent()
        for worker_id in gone:
            self.index.detach(worker_id)
            self._unready.discard(worker_id)
            self._ordered = None
        now = self._clock()
        freed = set()
        for request_id in [r for r, b in self._bookings.items() if b.expires_at < now]:
            booking = self._bookings.pop(request_id)
            self._end(booking)
            freed.add(booking.model)
        for model in freed:
            self.flow.poke(model)
        self._refresh_gauges(now)
        return gone

    def _refresh_gauges(self, now: float) -> None:
        counts = {(role, state): 0 for role in ("prefill", "decode") for state in ("healthy", "unhealthy")}
        for w in self.registry.workers.values():
            counts[w.info.role, "healthy" if self.registry.healthy(w, now) else "unhealthy"] += 1
        for (role, state), n in counts.items():
            self.metrics.workers.labels(role, state).set(n)
        self.metrics.index_blocks.set(self.index.size())
        self.metrics.in_flight.set(len(self._bookings))
        self._refresh_pool_signals(now)
        self._refresh_worker_costs()

    def _refresh_worker_costs(self) -> None:
        """Each registered worker's requests and cached blocks: what a scale-down that removed it
        would cost. A worker that left loses its series (a replica gone costs nothing)."""
        costed = set()
        for w in self.registry.workers.values():
            labels = (w.info.model, w.info.role, w.worker_id)
            costed.add(labels)
            self.metrics.worker_requests.labels(*labels).set(w.load.running + w.load.waiting)
            self.metrics.worker_cached_blocks.labels(*labels).set(self.index.blocks(w.worker_id))
        for labels in self._costed - costed:
            self.metrics.worker_requests.remove(*labels)
            self.metrics.worker_cached_blocks.remove(*labels)
        self._costed = costed

    def _refresh_pool_signals(self, now: float) -> None:
        """Every pool ever seen is written each time, at 0 once idle or empty: a policy or an alert
        reading a missing series could not tell "no load" from "no data"."""
        pools = dict.fromkeys(self._pools, (0, 0, 0, 0, 0.0))
        for w in self.registry.workers.values():
            running, waiting, owed, replicas, kv = pools.get((w.info.model, w.info.role), (0, 0, 0, 0, 0.0))
            if self.registry.healthy(w, now):
                running, waiting, replicas = running + w.load.running, waiting + w.load.waiting, replicas + 1
                kv += w.load.kv_cache_usage
            pools[w.info.model, w.info.role] = (running, waiting, owed + w.prefill_backlog, replicas, kv)
        self._pools.update(pools)
        requests, tokens = self.metrics.pool_requests, self.metrics.pool_prompt_tokens
        for (model, role), (running, waiting, owed, replicas, kv) in pools.items():
            self.metrics.pool_replicas.labels(model, role).set(replicas)
            self.metrics.pool_kv_cache_usage.labels(model, role).set(kv / replicas if replicas else 0.0)
            requests.labels(model, role, "running").set(running)
            requests.labels(model, role, "waiting").set(waiting)
            # Flow control queues for decode slots (free()): a request waiting there needs one.
            requests.labels(model, role, "queued").set(self.flow.queued(model) if role == "decode" else 0)
            tokens.labels(model, role).set(owed)

    # -- capacity (flow control's) --------------------------------------------------------

    def free(self, model: str) -> int:
        """The free part of `slots`."""
        return self.slots(model)[1]

    def slots(self, model: str) -> tuple[int, int]:
        """This replica's share of `model`'s slots (1/flow.replicas, at least one, of the healthy
        decode workers' max_running_requests) and how many of them are free now (minus the requests
        it routed there and has not seen complete). A model no worker serves gets one free slot, so
        that routing it answers at once why (no endpoints) instead of after queue_ttl_s, unless its
        pool scales from zero: then none, and its requests wait for a replica (a worker registering
        pokes the queue)."""
        group = self.registry.group(model, "decode")
        if not group.workers:
            if model in self.config.flow.scale_from_zero:  # requests wait for a replica to start
                self._cold_since.setdefault(model, self._clock())
                return 0, 0
            return 1, 1
        board, slots = self.registry.board, group.slots
        healthy = board.static[slots] | (self._clock() - board.last_seen[slots] <= self.registry.lease_s)
        limits = board.max_running[slots]
        limits = np.where(limits > 0, limits, self.config.overload.default_max_running_requests)
        total = int(limits[healthy].sum())
        # At least one slot each: replicas outnumbering the slots oversubscribe the engines a
        # little (they queue the excess) rather than leave a replica that can never route.
        share = max(1, total // self.config.flow.replicas) if total else 0
        # Count a worker as routing's overload filter does: the larger of this router's count and its
        # last heartbeat (a slot handed out on the first would be refused by the second: 503 instead
        # of a wait). With several router replicas the heartbeat counts the others' requests too, so
        # each counts its own only.
        used = board.busy(slots) if self.config.flow.replicas == 1 else board.in_flight[slots]
        return share, share - int(used[healthy].sum())

    # -- requests -------------------------------------------------------------------------

    def route(self, query: RouteQuery) -> Decision:
        started = time.perf_counter()
        if self._ordered is None:  # one candidate order on every replica, so tie-breaks agree
            self._ordered = sorted(self.registry.workers.values(), key=lambda w: w.worker_id)
        workers = self._ordered
        ctx = RouteContext(query, self._clock(), self.config, self.registry, self.hasher, self.estimate)
        decode = self._decode.run(ctx, workers)
        if isinstance(decode, Rejected):
            raise self._unavailable(query, decode)
        prefill, why = self._disaggregation.prefill_for(ctx, decode, workers)
        previous = self._bookings.pop(query.request_id, None)
        if previous is not None:  # the ingress re-routes a request (e.g. its replica died)
            self._end(previous)
        decision = self._decision(ctx, prefill, decode, why)
        self._book(query, decision, prefill, decode)
        for pick in (prefill, decode):
            if pick is not None:
                self.estimate.routed(ctx, pick.worker)
        self._count(query, decision, "remote_prefill" if prefill else "local_prefill")
        self.metrics.route_duration.observe(time.perf_counter() - started)
        return decision

    def _decision(self, ctx: RouteContext, prefill: Pick | None, decode: Pick, why: str) -> Decision:
        query = ctx.query
        decode_target = _target(ctx, decode)
        prefill_target = _target(ctx, prefill) if prefill else None
        return Decision(
            request_id=query.request_id,
            prefill=prefill_target,
            decode=decode_target,
            expected_cached_tokens=(prefill_target or decode_target).cached_tokens,
            prompt_tokens=len(query.tokens),
            policy="custom" if self.config.profiles else self.config.policy,
            reasons=(f"decode {decode.explain()}", why),
            degraded=any(w.info.model == query.model for w in map(self.registry.workers.get, self._unready) if w),
        )

    def _unavailable(self, query: RouteQuery, rejected: Rejected) -> OverloadedError:
        overloaded = rejected.stage == "not-overloaded"
        outcome = "overloaded" if overloaded else "no_endpoints"
        self.metrics.routes.labels(query.model, outcome).inc()
        if overloaded:
            message = f"all {rejected.before} decode workers for {query.model!r} are at their load limit"
        else:
            message = f"no decode worker for {query.model!r} passes the {rejected.stage!r} filter"
        return OverloadedError(message, code=outcome, retry_after_s=RETRY_AFTER_S)

    def _count(self, query: RouteQuery, decision: Decision, outcome: str) -> None:
        self.metrics.routes.labels(query.model, outcome).inc()
        self.metrics.prompt_tokens.labels(query.model, "true").inc(decision.expected_cached_tokens)
        self.metrics.prompt_tokens.labels(query.model, "false").inc(
            decision.prompt_tokens - decision.expected_cached_tokens
        )

    def _book(self, query: RouteQuery, decision: Decision, prefill: Pick | None, decode: Pick) -> None:
        owed = decision.prompt_tokens - decision.expected_cached_tokens
        (prefill or decode).worker.prefill_backlog += owed
        for pick in (prefill, decode):
            if pick is not None:
                pick.worker.in_flight += 1
        booking = Booking(
            query.tenant,
            query.model,
            prefill.worker.worker_id if prefill else None,
            decode.worker.worker_id,
            owed,
            self._clock() + self.config.request_ttl_s,
        )
        self._bookings[query.request_id] = booking

    def _first_token(self, booking: Booking) -> Booking:
        """The prompt is prefilled: its tokens leave the prefiller's backlog, a remote prefill
        worker is done with it."""
        prefiller = self.registry.workers.get(booking.prefiller)
        if prefiller is not None:
            prefiller.prefill_backlog = max(0, prefiller.prefill_backlog - booking.prefill_tokens)
        self._release(booking.prefill)
        return replace(booking, prefill=None, prefill_tokens=0)

    def _end(self, booking: Booking) -> None:
        self._release(self._first_token(booking).decode)

    def _release(self, *worker_ids: str | None) -> None:
        for worker_id in worker_ids:
            worker = self.registry.workers.get(worker_id) if worker_id else None
            if worker is not None:
                worker.release()

    def complete(self, request_id: str, stage: Stage, usage: Usage) -> bool:
        """Releases the request's load; False when the router has no record of it."""
        booking = self._bookings.get(request_id)
        if booking is None:
            return False
        if stage == "prefill_done":
            self._bookings[request_id] = self._first_token(booking)
            return True
        del self._bookings[request_id]
        self._end(booking)
        self.flow.poke(booking.model)
        tokens = self.metrics.completed_tokens
        tokens.labels(booking.tenant, "prompt").inc(usage.prompt_tokens)
        tokens.labels(booking.tenant, "cached").inc(usage.cached_tokens)
        tokens.labels(booking.tenant, "completion").inc(usage.completion_tokens)
        return True


def _target(ctx: RouteContext, pick: Pick) -> Target:
    cached = ctx.cached_tokens([pick.worker])[0]
    return Target(pick.worker.worker_id, pick.worker.info.address, cached, pick.score)
