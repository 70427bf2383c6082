"""An engine replica announces itself to glmserve's router and publishes its KV-cache events.

Each replica publishes vLLM's KV events (ZMQ) on its own ports, registers with every router
replica (role, model, event endpoints, block size, capacity) and heartbeats its load, so the
router's index and load picture follow the engines that actually run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from glmserve.common.roles import WorkerRole
from glmserve.router.types import WorkerInfo

# Two ports per replica (events, replay), above Ray's and NIXL's ranges.
EVENTS_PORT_BASE: dict[WorkerRole, int] = {"prefill": 26000, "decode": 27000}


@dataclass(frozen=True, slots=True)
class RouterLink:
    routers: tuple[str, ...]  # gRPC targets of the router replicas
    role: WorkerRole
    model: str
    # None: the role's fixed base (a pod per replica); `glmserve up` picks free ones, since two
    # stacks on one machine would otherwise publish on the same ports.
    port_base: int | None = None

    def ports(self, rank: int) -> tuple[int, int]:
        base = (EVENTS_PORT_BASE[self.role] if self.port_base is None else self.port_base) + 2 * rank
        return base, base + 1

    def kv_events_config(self, rank: int) -> dict[str, Any]:
        events, replay = self.ports(rank)
        return {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://*:{events}",
            "replay_endpoint": f"tcp://*:{replay}",
        }

    def worker(
        self, worker_id: str, node_ip: str, rank: int, block_size: int, max_running: int, *, cache_blocks: int = 0
    ) -> WorkerInfo:
        events, replay = self.ports(rank)
        return WorkerInfo(
            worker_id=worker_id,
            role=self.role,
            model=self.model,
            address=node_ip,
            kv_events_endpoint=f"tcp://{node_ip}:{events}",
            kv_replay_endpoint=f"tcp://{node_ip}:{replay}",
            block_size=block_size,
            max_running_requests=max_running,
            kv_cache_blocks=cache_blocks,
        )
