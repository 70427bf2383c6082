"""`glmserve up`: local Ray, the Serve application, progress while it starts, clean shutdown."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from glmserve.common import ports
from glmserve.common.config import ENGINE_HASH_SEED, ROUTER_TOKEN_ENV, ServeConfig
from glmserve.common.errors import ConfigError
from glmserve.common.signals import until_signal
from glmserve.serving import reaper
from glmserve.serving.local_router import LocalRouter, local_flow
from glmserve.serving.tls import check_tls

log = logging.getLogger("glmserve.up")

Progress = Callable[[str], None]

# Ray Serve LLM schedules each replica's engine on a placement bundle of {"CPU": 1}; a
# 2-core laptop has too few logical CPUs for an engine per replica plus Ray's own actors.
MIN_LOGICAL_CPUS = 8
START_TIMEOUT_S = 900
DRAIN_MARGIN_S = 30  # Serve's own steps around a replica's drain (stopping it, the controller's loop)


def serve_environment(port: int, proxy_port: int) -> dict[str, str]:
    """Ray Serve's throughput preset, with the ingress replica itself listening on `port`.

    Ray's Python HTTP proxy relays every streamed chunk over an extra actor hop; measured on
    this 2-core machine it cost ~25% of throughput. With direct ingress the ingress replica
    runs its own uvicorn (with TLS when configured) and the proxy only keeps an internal port.
    Handle calls between deployments go over gRPC.
    """
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
        # Local mode has no load balancer to deregister from: stop without the 30 s drain.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
        # Ray starts workers at nice 15, so that on a shared cluster node its daemons stay
        # responsive. Here the workers are the server (ingress, engines): at nice 15 any other
        # process on the laptop, a benchmark's own client included, preempts the engine.
        "RAY_worker_niceness": "0",
    }


def ensure_port_free(host: str, port: int) -> None:
    """Ray Serve's proxy binds with SO_REUSEPORT: a second stack on a busy port would silently
    share it with the first and split its traffic, so refuse up front."""
    with ports.probe(host) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); is another server running?") from None


def _device() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def _status_line(app_name: str) -> tuple[str, str]:
    from ray import serve

    status = serve.status().applications.get(app_name)
    if status is None:
        return "DEPLOYING", "waiting for the Serve controller"
    state = getattr(status.status, "value", str(status.status))
    parts = []
    for name, dep in sorted(status.deployments.items()):
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(dep.replica_states.items()))
        parts.append(f"{name}: {counts or dep.status.lower()}")
    return state, "; ".join(parts) or status.message


class Stack:
    """The running local stack; `stop()` is idempotent and safe from a signal handler's thread."""

    def __init__(self, cfg: ServeConfig, progress: Progress = print) -> None:
        self.cfg = cfg
        self.progress = progress
        self.started_at = time.time()
        self._stopped = False
        self._own_cluster = cfg.ray_address is None
        # Where Ray exports every actor's metrics, the engines' vllm:* series included.
        self.metrics_port: int | None = None
        self.router: LocalRouter | None = None

    def start(self) -> str:
        import ray
        from ray import serve
        from ray.serve.config import HTTPOptions

        from glmserve.serving.app import APP_NAME, check_placement, topology_spec
        from glmserve.serving.ingress.discovery import local_targets
        from glmserve.serving.models import resolve_model
        from glmserve.serving.placement import head_node_id
        from glmserve.serving.topology import application, plan

        if self._own_cluster:  # a joined cluster's Serve proxies (if running) hold their ports already
            ensure_port_free(self.cfg.host, self.cfg.port)
        reaper.become_subreaper()
        model = resolve_model(self.cfg.model, self.cfg.served_model_name, progress=self.progress)
        device = _device()
        self.progress(f"starting Ray ({'local' if self._own_cluster else self.cfg.ray_address}), device: {device}")
        num_cpus = self.cfg.num_cpus or max(MIN_LOGICAL_CPUS, os.cpu_count() or 1)
        proxy_port = ports.free_port(self.cfg.host)
        if self._own_cluster:
            self.metrics_port = ports.free_port("127.0.0.1")
            # Read by every Serve process, which inherit the environment of the node we start.
            os.environ.update(serve_environment(self.cfg.port, proxy_port))
        router_target = self.cfg.router_address
        # Inherited by every engine process: any router (ours or --router-address) can hash like them.
        os.environ["PYTHONHASHSEED"] = ENGINE_HASH_SEED
        if self.cfg.runs_local_router:
            self.router = LocalRouter(
                Path(tempfile.mkdtemp(prefix="glmserve-router-")),
                tenants_file=self.cfg.tenants_file,
                redis_url=self.cfg.redis_url,
                outage=self.cfg.limits_outage,
                flow=local_flow(self.cfg, model.name),
            )
            router_target = self.router.start()
            # Inherited by the ingress and the engines, the router's callers.
            os.environ[ROUTER_TOKEN_ENV] = self.router.token
            self.progress(f"router: {router_target} (metrics http://127.0.0.1:{self.router.metrics_port}/metrics)")
        # ray.init replaces the SIGTERM handler with sys.exit; keep ours so shutdown stays orderly.
        sigterm = signal.getsignal(signal.SIGTERM)
        ray.init(
            # "local" never joins a cluster found on the machine (another stack, a stale one, RAY_ADDRESS).
            address=self.cfg.ray_address or "local",
            num_cpus=num_cpus if self._own_cluster else None,
            include_dashboard=False,
            log_to_driver=os.environ.get("GLMSERVE_RAY_LOGS") == "1",
            configure_logging=False,
            _metrics_export_port=self.metrics_port,
        )
        signal.signal(signal.SIGTERM, sigterm)
        http = HTTPOptions(
            host=self.cfg.host,
            port=proxy_port if self._own_cluster else self.cfg.port,
            ssl_certfile=str(self.cfg.tls_certfile) if self.cfg.tls_certfile else None,
            ssl_keyfile=str(self.cfg.tls_keyfile) if self.cfg.tls_keyfile else None,
        )
        check_placement(self.cfg, device)  # type: ignore[arg-type]
        serve.start(http_options=http)
        targets = local_targets(self.cfg, self.metrics_port, self.router.metrics_port if self.router else None)
        avoid = None if self._own_cluster else head_node_id()
        spec = topology_spec(model, self.cfg, device, router_target, targets, avoid_node=avoid)  # type: ignore[arg-type]
        app = application(plan(spec))
        serve.run_many(
            [serve.RunTarget(target=app, name=APP_NAME, route_prefix="/")],
            wait_for_applications_running=False,
        )
        self._wait_running(APP_NAME)
        self.progress(f"ready: {self.cfg.base_url} serves {model.name} ({time.time() - self.started_at:.0f} s)")
        if self.metrics_port:
            self.progress(f"engine and Ray metrics: http://127.0.0.1:{self.metrics_port}/metrics")
        return self.cfg.base_url

    def _wait_running(self, app_name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            state, detail = _status_line(app_name)
            if state == "RUNNING":
                return
            if state in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise ConfigError(f"the application failed to start: {detail}")
            line = f"[{time.time() - self.started_at:5.0f} s] {state.lower()}: {detail}"
            if detail != last:
                self.progress(line)
                last = detail
            time.sleep(1.0)
        raise ConfigError(f"the application did not start within {START_TIMEOUT_S} s")

    def _drain(self, app_name: str) -> None:
        """Deletes the application and waits while Serve drains it: every ingress and engine
        replica finishes its in-flight requests (within the drain timeout) before it stops.
        `serve.shutdown()` alone gives all of Serve 30 s, and then Ray's shutdown cuts the rest."""
        from ray import serve

        from glmserve.serving.ingress.app import Ingress

        # Serve keeps a draining replica's listener open (it refuses only behind HAProxy), and a
        # new request would wait for engine replicas that are going away: the ingress refuses them.
        try:
            ingress = serve.get_deployment_handle(Ingress.name, app_name)  # type: ignore[attr-defined]  # a Deployment
            ingress.drain.remote().result(timeout_s=10)
        except Exception as exc:  # a dead or unreachable ingress takes no new requests anyway
            log.warning("could not switch the ingress to draining: %s", exc)
        serve.delete(app_name, _blocking=False)
        deadline = time.monotonic() + self.cfg.drain_timeout_s + DRAIN_MARGIN_S
        self.progress(f"draining: in-flight requests finish (at most {self.cfg.drain_timeout_s:.0f} s)")
        while app_name in serve.status().applications and time.monotonic() < deadline:
            time.sleep(1.0)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        import ray
        from ray import serve

        self.progress("shutting down")
        if ray.is_initialized():
            from glmserve.serving.app import APP_NAME

            try:
                self._drain(APP_NAME)
                # A joined cluster's Serve (its controller, proxies, other applications) is not ours.
                if self._own_cluster:
                    serve.shutdown()
            except Exception as exc:  # still tear the cluster down below
                log.warning("stopping Serve failed: %s", exc)
            ray.shutdown()
        if self.router is not None:
            self.router.stop()
        if self._own_cluster:
            reaper.kill_descendants()
        reaper.sweep_shm(since=self.started_at)
        self.progress("stopped")


def run_until_signal(cfg: ServeConfig, progress: Progress = print) -> None:
    """Starts the stack and serves until SIGINT/SIGTERM; always tears down what it started."""
    if cfg.tls_keyfile is not None:  # before anything starts (or imports Ray and vLLM, which takes a while)
        check_tls(cfg.tls_keyfile)
    stack = Stack(cfg, progress)
    try:
        with until_signal() as stop:
            stack.start()
            progress("press Ctrl-C to stop")
            stop.wait()
    finally:
        stack.stop()
