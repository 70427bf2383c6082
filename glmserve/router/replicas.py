"""The router replicas an address stands for, and the ingress's client over all of them.

Every router replica holds the same KV index (each engine registers with each), but only the
replica that routed a request booked it: its load on the chosen workers, the prefill work they
owe. So a request's Complete calls must reach that replica. One gRPC channel balancing calls over
all replicas (round_robin) cannot promise that: with Route and Complete alternating, every Route
went to one replica and every Complete to the other, which never heard of the request, while the
routing replica kept the request on its workers until `request_ttl_s` (an hour) ran out and, as
bookings piled up, found every worker overloaded and answered 503.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar, Unpack

import grpc

from glmserve.router.client import (
    DEFAULT_ROUTE_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    RouteOptions,
    RouterClient,
    RouterUnavailableError,
)
from glmserve.router.shards import shard_order
from glmserve.router.types import Decision, Outcome, Stage, Usage

Resolve = Callable[[], Awaitable[Collection[str]]]
REFRESH_S = 5.0  # how often the ingress looks the replicas up again (router pods come and go)
MAX_OWNED = 1 << 16  # requests routed and not finished that the client remembers the replica of


class _Completes(Protocol):
    async def complete(
        self, request_id: str, usage: Usage | None = None, *, stage: Stage = "finished", outcome: Outcome = "ok"
    ) -> bool: ...


T = TypeVar("T", bound=_Completes)


class Owners(Generic[T]):
    """Which replica (or shard) routed each request not finished yet, so its Completes go there."""

    def __init__(self) -> None:
        self._by_request: dict[str, T] = {}

    def remember(self, request_id: str, owner: T) -> None:
        if len(self._by_request) >= MAX_OWNED:  # a caller that never finishes its requests
            del self._by_request[next(iter(self._by_request))]
        self._by_request[request_id] = owner

    def owner(self, request_id: str, stage: Stage) -> T | None:
        """The request's owner; forgotten once the request is finished."""
        by_request = self._by_request
        return by_request.pop(request_id, None) if stage == "finished" else by_request.get(request_id)

    def values(self) -> list[T]:
        return list(self._by_request.values())

    async def route_on_first(
        self, request_id: str, candidates: Iterable[T], route: Callable[[T], Awaitable[Decision]]
    ) -> Decision:
        """The decision of the first of `candidates` that answers, which becomes the request's owner;
        the last failure when none does."""
        failure: RouterUnavailableError | None = None
        for candidate in candidates:
            try:
                decision = await route(candidate)
            except RouterUnavailableError as exc:
                failure = exc
                continue
            self.remember(request_id, candidate)
            return decision
        assert failure is not None
        raise failure

    async def complete(self, request_id: str, usage: Usage | None, *, stage: Stage, outcome: Outcome) -> bool:
        """Complete on the request's owner; False, without a call, for a request none routed."""
        owner = self.owner(request_id, stage)
        if owner is None:
            return False
        return await owner.complete(request_id, usage, stage=stage, outcome=outcome)

    def clear(self) -> None:
        self._by_request.clear()


async def router_replicas(addresses: Sequence[str]) -> list[str]:
    """One gRPC target per address each of `addresses` ("host:port", "dns:///host:port" or a list
    "ipv4:host:port,host:port"; shards' addresses separated by ";") resolves to; an address that
    does not resolve stays as it is (its client then reports it unreachable)."""
    loop = asyncio.get_running_loop()
    targets: set[str] = set()
    for address in (a.strip() for shards in addresses for a in shards.split(";")):  # engines: every shard
        if address.startswith(("ipv4:", "ipv6:")):
            targets.update(address.split(":", 1)[1].split(","))
            continue
        host, _, port = address.removeprefix("dns:///").rpartition(":")
        try:
            infos = await loop.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError):
            targets.add(address)
            continue
        targets.update(f"[{info[4][0]}]:{port}" if info[0] == socket.AF_INET6 else f"{info[4][0]}:{port}"
                       for info in infos)  # fmt: skip
    return sorted(targets)


class RouterReplicas:
    """Route goes to each replica in turn, skipping ones gRPC knows to be down (and trying the
    next when one fails); every Complete of a request goes to the replica that routed it."""

    def __init__(
        self,
        address: str,
        *,
        route_timeout_s: float = DEFAULT_ROUTE_TIMEOUT_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        resolve: Resolve | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.target = address
        self._resolve = resolve or (lambda: router_replicas([address]))
        self._client_args: dict[str, Any] = {"route_timeout_s": route_timeout_s, "timeout_s": timeout_s}
        self._refresh_s = refresh_s
        self._clients: dict[str, RouterClient] = {}
        self._retired: list[RouterClient] = []  # replicas no longer resolved, kept for their Completes
        self._resolved_at = -float("inf")
        self._resolving: asyncio.Task[None] | None = None
        self._turn = 0
        self._owners: Owners[RouterClient] = Owners()

    async def _replicas(self) -> list[RouterClient]:
        """The replicas' clients. Only a call that knows no replica yet waits for the address to
        resolve; later look-ups run beside the requests, so a slow DNS answer holds none up."""
        if time.monotonic() - self._resolved_at >= self._refresh_s and (
            self._resolving is None or self._resolving.done()
        ):
            self._resolved_at = time.monotonic()
            self._resolving = asyncio.create_task(self._refresh())
        if not self._clients and self._resolving is not None:
            await asyncio.shield(self._resolving)
        return list(self._clients.values())

    async def _refresh(self) -> None:
        targets = set(await self._resolve())
        for gone in self._clients.keys() - targets:
            self._retired.append(self._clients.pop(gone))
        owning = {id(c) for c in self._owners.values()}
        for client in [c for c in self._retired if id(c) not in owning]:
            self._retired.remove(client)
            await client.close()
        for target in sorted(targets - self._clients.keys()):
            self._clients[target] = RouterClient(target, **self._client_args)

    def _order(self, clients: list[RouterClient]) -> list[RouterClient]:
        """Round-robin order from this call's turn, replicas in TRANSIENT_FAILURE last."""
        self._turn += 1
        start = self._turn % len(clients)
        rotated = clients[start:] + clients[:start]
        down = grpc.ChannelConnectivity.TRANSIENT_FAILURE
        return sorted(rotated, key=lambda c: c.state(try_to_connect=True) == down)

    async def route(
        self, request_id: str, model: str, prompt_token_ids: Sequence[int], **options: Unpack[RouteOptions]
    ) -> Decision:
        """RouterClient.route on one replica; RouterUnavailableError only when none answers. The
        replica that routed (and admitted) the request gets its Completes, which settle it."""
        clients = await self._replicas()
        if not clients:
            raise RouterUnavailableError(f"router address {self.target} resolves to no replica")
        return await self._owners.route_on_first(
            request_id,
            self._order(clients),
            lambda client: client.route(request_id, model, prompt_token_ids, **options),
        )

    async def complete(
        self, request_id: str, usage: Usage | None = None, *, stage: Stage = "finished", outcome: Outcome = "ok"
    ) -> bool:
        """RouterClient.complete on the replica that routed the request; False, without a call, for
        a request no replica routed through this client."""
        return await self._owners.complete(request_id, usage, stage=stage, outcome=outcome)

    async def close(self) -> None:
        if self._resolving is not None:
            self._resolving.cancel()
        clients = {id(c): c for c in [*self._clients.values(), *self._retired]}
        self._clients, self._retired = {}, []
        self._owners.clear()
        for client in clients.values():
            await client.close()

    async def __aenter__(self) -> RouterReplicas:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class RouterShards:
    """Several router shards (shards.py), each an address of its replicas: a tenant's requests go to
    the shard that owns it, or, while every replica of that shard is down, to the tenant's next
    shard (whose engines have not cached its prefixes: slower, not failed). Every Complete goes to
    the shard that routed the request."""

    def __init__(self, addresses: Sequence[str], **replica_args: Any) -> None:
        self.shards = [RouterReplicas(address, **replica_args) for address in addresses]
        self._owners: Owners[RouterReplicas] = Owners()

    async def route(
        self, request_id: str, model: str, prompt_token_ids: Sequence[int], **options: Unpack[RouteOptions]
    ) -> Decision:
        shards = (self.shards[i] for i in shard_order(options.get("tenant", ""), len(self.shards)))
        return await self._owners.route_on_first(
            request_id, shards, lambda shard: shard.route(request_id, model, prompt_token_ids, **options)
        )

    async def complete(
        self, request_id: str, usage: Usage | None = None, *, stage: Stage = "finished", outcome: Outcome = "ok"
    ) -> bool:
        return await self._owners.complete(request_id, usage, stage=stage, outcome=outcome)

    async def close(self) -> None:
        for shard in self.shards:
            await shard.close()

    async def __aenter__(self) -> RouterShards:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def connect(address: str, **replica_args: Any) -> RouterReplicas | RouterShards:
    """The ingress's client for `address`: one router's replicas, or several shards' addresses
    separated by ";" in shard order (shard i's replicas run with `shard: {count: n, index: i}`)."""
    shards = [a.strip() for a in address.split(";")]
    if len(shards) == 1:
        return RouterReplicas(address, **replica_args)
    return RouterShards(shards, **replica_args)
