"""An engine replica's last step: let vLLM finish the KV transfers it still owes, then stop it.

Ray Serve LLM's `LLMServer.__del__` never shuts vLLM down (the engine dies with the actor). A
prefill engine's answer is not the end of its work, though: the decode engine pulls the prompt's KV
afterwards, and Serve, which counted the call done at the answer, would stop the replica under the
pull. vLLM's own graceful shutdown waits for that: with `shutdown_timeout` > 0 (set on prefill engines,
`args.kv_pull_drain`) its engine core keeps stepping after SIGTERM until no request holds blocks for
a transfer (each is released when the decode side reports the read, or when its lease lapses).
"""

from __future__ import annotations

import asyncio

from vllm.v1.engine.async_llm import AsyncLLM


async def finish_kv_transfers(engine: AsyncLLM) -> None:
    """Shut `engine` down once its pending KV transfers are done (at most its `shutdown_timeout`);
    an engine without one (decode, colocated) is left to stop with the replica, as before."""
    timeout = engine.vllm_config.shutdown_timeout
    if timeout:
        # vLLM's shutdown blocks (it joins the engine core process): off the replica's event loop.
        await asyncio.to_thread(engine.shutdown, timeout=timeout)
