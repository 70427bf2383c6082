"""CPU engines: the engine core and its worker poll for each other's messages without hogging a core.

vLLM's shared-memory message queue lets a reader spin for a second after its last message
(`sched_yield` in a loop) before it parks on the writer's ZMQ notification. On a GPU host that
saves microseconds per step on cores nobody else needs. On CPU engines, the model, the ingress
and the proxy run on those cores (`top` during `python -m benchmarks.priority` showed the engine
core at 63% of a core, nearly all of it waiting; 17% with this fix). Parking at once is no fix:
notifications get lost (vLLM re-checks a parked reader only every 5 s, and requests stalled for
seconds when we tried).
So a CPU reader keeps polling the shared flag, but sleeps 100 us between polls instead of
yielding: a message waits at most about 0.2 ms longer against a step of ~10 ms.
GPU engines keep vLLM's default.
Upstream fix: make the busy-wait of `SpinCondition.wait` in
`vllm/distributed/device_communicators/shm_broadcast.py` configurable.
"""

from __future__ import annotations

import time

POLL_INTERVAL_S = 100e-6


def apply() -> None:
    from vllm.distributed.device_communicators import shm_broadcast
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or getattr(shm_broadcast.SpinCondition, "polite", False):
        return
    spinning = shm_broadcast.SpinCondition

    class PoliteSpinCondition(spinning):  # type: ignore[misc,valid-type]
        polite = True

        def wait(self, timeout_ms: int | None = None) -> None:
            if time.monotonic() <= self.last_read + self.busy_loop_s:
                time.sleep(POLL_INTERVAL_S)
            else:
                super().wait(timeout_ms)

    # MessageQueue looks the class up in its module when it builds a queue.
    shm_broadcast.SpinCondition = PoliteSpinCondition  # type: ignore[misc]
