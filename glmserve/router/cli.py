"""`glmserve router serve --config FILE [--port N]`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from glmserve.router.config import RouterConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    router = subparsers.add_parser("router", help="the KV-cache-aware gRPC router")
    rsub = router.add_subparsers(dest="router_command", required=True)
    serve = rsub.add_parser(
        "serve",
        help="serve the router until SIGINT/SIGTERM",
        description="Serves the gRPC router (health checking and reflection on) that engines register with and "
        "the ingress asks where to send each request; with a tenants file in its config (admission:), it admits "
        "each request against its tenant's plan first. With GLMSERVE_ROUTER_TOKEN set, every call but health "
        "checks must carry `authorization: Bearer <token>`.",
    )
    serve.add_argument("--config", type=Path, required=True, help="router YAML (see glmserve/router/config.py)")
    serve.add_argument("--port", type=int, help="gRPC port (default: the config's, 50051)")
    serve.add_argument("--host", help="listen address (default: the config's, 0.0.0.0)")


def run(args: argparse.Namespace) -> None:
    import uvloop

    from glmserve.router.auth import token_from_environment
    from glmserve.router.config import load_config

    config = load_config(args.config, port=args.port, host=args.host)
    token = token_from_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvloop: gRPC aio's callbacks and the limits store's socket cost less CPU per request on it
    uvloop.run(_serve(config, token))


async def _serve(config: RouterConfig, token: str | None) -> None:
    from glmserve.router.server import RouterServer

    server = RouterServer(config, token=token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    # What is alive now (modules, gRPC, config, tenants) lives as long as the process: frozen, it is
    # out of the collector's generations, so a full collection no longer walks it each time.
    gc.freeze()
    try:
        await stop.wait()
    finally:
        await server.stop()
