"""Runs vLLM offline (`LLM.generate`) in its own process and prints JSON results.

vLLM spawns engine processes, so it must not run inside pytest's process; tests call
`run_offline()` which executes this module with a request file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_offline(
    request: dict[str, Any], workdir: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> dict[str, Any]:
    req, out = workdir / "offline-request.json", workdir / "offline-result.json"
    req.write_text(json.dumps(request))
    # Started from the tests' own directory so no folder named like an installed package shadows it.
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.offline_vllm", str(req), str(out)],
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"offline vLLM failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def _main(request_path: str, result_path: str) -> None:
    from vllm import LLM, SamplingParams

    request = json.loads(Path(request_path).read_text())
    llm = LLM(
        model=request["model"],
        dtype=request.get("dtype", "auto"),
        enforce_eager=True,
        max_model_len=request.get("max_model_len", 4096),
        kv_cache_memory_bytes=512 * 2**20,
        seed=0,
        logprobs_mode="raw_logits",
        max_logprobs=-1,
        **request.get("engine", {}),
    )
    result: dict[str, Any] = {}
    if prompts := request.get("greedy"):
        params = SamplingParams(temperature=0, max_tokens=request["max_tokens"], ignore_eos=False)
        # A prompt is token ids, or text that vLLM tokenizes as its completions API does.
        outs = llm.generate([{"prompt": p} if isinstance(p, str) else {"prompt_token_ids": p} for p in prompts], params)
        result["greedy"] = [list(o.outputs[0].token_ids) for o in outs]
        result["greedy_prompt_token_ids"] = [list(o.prompt_token_ids or []) for o in outs]
    if prompts := request.get("logits"):
        params = SamplingParams(temperature=0, max_tokens=request["logit_steps"], logprobs=-1)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
        result["logits"] = [
            {
                "tokens": list(o.outputs[0].token_ids),
                "steps": [[step[t].logprob for t in range(len(step))] for step in o.outputs[0].logprobs or []],
            }
            for o in outs
        ]
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
