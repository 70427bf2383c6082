"""A prefill engine's shutdown waits for the KV pull it still owes: a real vLLM engine (the tiny
checkpoint, CPU) with NIXL as the producer side of P/D, whose answered prompt no decode engine pulls."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import pytest
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.v1.engine.async_llm import AsyncLLM

from glmserve.common.config import ServeConfig
from glmserve.common.ports import free_port
from glmserve.serving.engine.args import kv_pull_drain, kv_roles
from glmserve.serving.engine.shutdown import finish_kv_transfers
from glmserve.serving.models import resolve_model

LEASE_S = 8  # how long the prefill side keeps blocks no decode engine asks for (vLLM's kv_lease_duration)


@pytest.mark.slow
def test_a_prefill_engine_stops_only_once_the_kv_it_owes_is_released(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_NIXL_SIDE_CHANNEL_PORT", str(free_port()))  # beside any running stack
    model = resolve_model("glm-4.6-tiny")
    kw = kv_pull_drain("prefill", ServeConfig().drain_timeout_s)
    assert kw == {"shutdown_timeout": 600}  # glmserve's default drain: far above the lease
    transfer = kv_roles("NixlConnector", "prefill") | {"kv_connector_extra_config": {"kv_lease_duration": LEASE_S}}
    args = AsyncEngineArgs(
        model=str(model.path),
        enforce_eager=True,
        kv_cache_memory_bytes=256 * 2**20,
        max_model_len=1024,
        kv_transfer_config=transfer,  # type: ignore[arg-type]  # vLLM validates the dict into its config
        **kw,
    )
    # In a fresh interpreter: NIXL's import aborts a process that already loaded what the suite's
    # other tests load (the whole pytest run died with it), as a Serve replica's process never has.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        waited = child.submit(stop_time, args).result(timeout=300)
    # Not at once (the blocks were held for the pull), and not at the timeout: when the lease lapsed.
    assert LEASE_S - 1 <= waited < 60, waited


def stop_time(args: AsyncEngineArgs) -> float:
    return asyncio.run(prefill_then_stop(args))


async def prefill_then_stop(args: AsyncEngineArgs) -> float:
    engine = AsyncLLM.from_engine_args(args)
    # What glmserve's ingress asks a prefill engine for: one token, the KV kept for a decode engine.
    params = SamplingParams(max_tokens=1, extra_args={"kv_transfer_params": {"do_remote_decode": True}})
    final = None
    async for out in engine.generate({"prompt_token_ids": list(range(10, 300))}, params, "pd-1"):
        final = out
    assert final is not None and final.finished
    assert final.kv_transfer_params and final.kv_transfer_params["remote_block_ids"]  # what decode would pull
    answered = time.monotonic()
    await finish_kv_transfers(engine)
    return time.monotonic() - answered
