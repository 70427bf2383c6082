from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

# a real redis-server for the limits of routers that admit
from tests.admission.conftest import redis_server, redis_url  # noqa: F401
from tests.router.harness import ServerThread, SimEngine, config


@pytest.fixture
def start_router() -> Iterator[Callable[..., ServerThread]]:
    """Starts routers (config overrides as keyword arguments, `token`: the one it requires); all
    are stopped after the test."""
    started: list[ServerThread] = []

    def start(token: str | None = None, **overrides: Any) -> ServerThread:
        server = ServerThread(config(**overrides), token)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def engines() -> Iterator[Callable[..., SimEngine]]:
    made: list[SimEngine] = []

    def make(worker_id: str, **kwargs: Any) -> SimEngine:
        engine = SimEngine(worker_id, **kwargs)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()
