"""A real vLLM engine (the tiny checkpoint, CPU) publishing KV events, for test_vllm_parity.py.

Run as a subprocess: `python -m tests.router.vllm_engine SPEC.json`. SPEC holds the KV-event
endpoints and the prompts ({"tokens": [...], "cache_salt": "..."}); the engine prefills them,
prints `READY {"block_size": N}` (vLLM logs to stdout too), and serves its replay socket until stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(spec_path: str) -> None:
    from vllm import LLM, SamplingParams

    spec = json.loads(Path(spec_path).read_text())
    model = os.path.expanduser("~/.cache/glmserve/models/glm-4.6-tiny")
    llm = LLM(
        model,
        enforce_eager=True,
        kv_cache_memory_bytes=512 * 2**20,
        max_model_len=2048,
        enable_prefix_caching=True,
        prefix_caching_hash_algo="sha256_cbor",
        kv_events_config={
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": spec["endpoint"],
            "replay_endpoint": spec["replay_endpoint"],
        },
    )
    prompts = [{"prompt_token_ids": p["tokens"], "cache_salt": p["cache_salt"] or None} for p in spec["prompts"]]
    # One at a time, so that each later prompt finds its predecessors' blocks cached.
    for prompt in prompts:
        llm.generate([prompt], SamplingParams(max_tokens=spec["max_tokens"]), use_tqdm=False)
    block_size = llm.llm_engine.vllm_config.cache_config.block_size
    print("READY", json.dumps({"block_size": block_size}), flush=True)
    sys.stdin.read()  # the replay socket stays up until the test is done


if __name__ == "__main__":
    main(sys.argv[1])
