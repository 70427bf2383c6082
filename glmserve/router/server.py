"""The router process: the gRPC service with health checking and reflection, the engines' event
feeds, a periodic sweep, and Prometheus metrics over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from glmserve.common import tracing
from glmserve.common.config import ROUTER_TOKEN_ENV
from glmserve.common.errors import ConfigError
from glmserve.router import envoy_rls
from glmserve.router.admitter import Admitter
from glmserve.router.auth import TokenAuth
from glmserve.router.config import RouterConfig
from glmserve.router.metrics import RouterMetrics
from glmserve.router.proto import router_pb2 as pb
from glmserve.router.proto import router_pb2_grpc as pb_grpc
from glmserve.router.router import Router
from glmserve.router.service import RouterService, StrictDecoding
from glmserve.router.subscriber import Subscriptions

log = logging.getLogger("glmserve.router")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Router"].full_name
SWEEP_INTERVAL_S = 1.0
# A 1M-token prompt is ~5 MB of varints, past gRPC's 4 MB default.
MAX_MESSAGE_BYTES = 64 * 2**20


class RouterServer:
    def __init__(
        self, config: RouterConfig, *, clock: Callable[[], float] | None = None, token: str | None = None
    ) -> None:
        """`token`: every call but health checks must carry it (auth.py); None: any caller is served."""
        self.config = config
        self._token = token
        self.metrics = RouterMetrics()
        self.router = Router(config, self.metrics, clock) if clock else Router(config, self.metrics)
        self.admitter = Admitter.from_config(config.admission, self.metrics.registry, config.request_ttl_s)
        self.port = 0
        self._subscriptions: Subscriptions | None = None
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self._sweeper: asyncio.Task[None] | None = None
        self._metrics_http: Any = None

    async def start(self) -> int:
        """Starts serving and returns the bound gRPC port."""
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)]
        interceptors: list[grpc.aio.ServerInterceptor] = [TokenAuth(self._token)] if self._token else []
        server = grpc.aio.server(interceptors=[*interceptors, StrictDecoding()], options=options)
        try:
            self.port = server.add_insecure_port(f"{self.config.host}:{self.config.port}")
        except RuntimeError as exc:  # gRPC's way of saying the address is taken or invalid
            raise ConfigError(f"cannot listen on {self.config.host}:{self.config.port}: {exc}") from None
        if self.config.metrics_port is not None:
            try:
                self._metrics_http = start_http_server(self.config.metrics_port, registry=self.metrics.registry)
            except OSError as exc:
                raise ConfigError(f"cannot serve metrics on port {self.config.metrics_port}: {exc}") from None
        self._subscriptions = Subscriptions(self.router, self.config.events.replay_timeout_s)
        servicer = RouterService(
            self.router, self._subscriptions, tracing.tracer("glmserve-router"), admitter=self.admitter
        )
        pb_grpc.add_RouterServicer_to_server(servicer, server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        services = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
        if self.config.envoy_rate_limit.enabled:
            # The config requires a tenants file with it, so the router admits: Envoy's hits and
            # Route's admissions share one set of plans, one limiter and one store.
            assert self.admitter is not None
            envoy = envoy_rls.EnvoyRateLimitService(
                self.admitter.tenants, self.admitter.limiter, domain=self.config.envoy_rate_limit.domain
            )
            envoy_rls.rls_grpc.add_RateLimitServiceServicer_to_server(envoy, server)
            services.append(envoy_rls.SERVICE_NAME)
        reflection.enable_server_reflection(services, server)
        await server.start()
        self._server = server
        for worker in self.router.registry.workers.values():
            self._subscriptions.follow(worker.info)
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._sweeper = asyncio.create_task(self._sweep(), name="router-sweep")
        log.info("router serving on %s:%d (policy %s)", self.config.host, self.port, self.config.policy)
        if not self._token:
            log.warning("no %s: any caller that reaches the port is served", ROUTER_TOKEN_ENV)
        return self.port

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            for worker_id in self.router.sweep():
                log.info("worker %s silent for %.0f s: forgotten", worker_id, self.config.workers.forget_after_s)
                if self._subscriptions is not None:
                    self._subscriptions.stop(worker_id)
            if self.admitter is not None:
                for request_id in self.admitter.sweep():
                    log.warning("request %s never completed: its admission is settled as admitted", request_id)

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            await self._server.stop(grace_s)
        if self._subscriptions is not None:
            await self._subscriptions.close()
        if self.admitter is not None:
            await self.admitter.aclose()
        if self._metrics_http is not None:
            http_server, thread = self._metrics_http
            http_server.shutdown()
            thread.join()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
