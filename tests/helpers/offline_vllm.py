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
        top2 = bool(request.get("top2"))
        params = SamplingParams(
            temperature=0, max_tokens=request["max_tokens"], ignore_eos=request.get("ignore_eos", False),
            logprobs=2 if top2 else None,
        )  # fmt: skip
        # A prompt is token ids, or text that vLLM tokenizes as its completions API does.
        outs = llm.generate([{"prompt": p} if isinstance(p, str) else {"prompt_token_ids": p} for p in prompts], params)
        result["greedy"] = [list(o.outputs[0].token_ids) for o in outs]
        result["greedy_prompt_token_ids"] = [list(o.prompt_token_ids or []) for o in outs]
        if top2:
            # Raw logits (logprobs_mode): how far the chosen token led the next one at each step.
            result["greedy_top2_gap"] = [[_gap(step) for step in o.outputs[0].logprobs or []] for o in outs]
        if cuts := request.get("continue_at"):
            result["continued"] = _continued(llm, result, cuts, params)
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


def _gap(step: dict[int, Any]) -> float:
    best, second = sorted((entry.logprob for entry in step.values()), reverse=True)[:2]
    return float(best - second)


def _continued(llm: Any, result: dict[str, Any], cuts: list[int], params: Any) -> list[list[list[int]]]:
    """Each greedy output generated again from its prompt plus its first k tokens (for each k in
    `cuts`), as a migrated request continues: it arrives at an engine where the other prompts are
    being decoded (5 steps in), as on a serving replica."""
    engine = llm.llm_engine
    prompts, outputs = result["greedy_prompt_token_ids"], result["greedy"]
    continued: list[list[list[int]]] = []
    for i, (prompt, output) in enumerate(zip(prompts, outputs, strict=True)):
        runs = []
        for k in cuts:
            cont = params.clone()
            cont.max_tokens = params.max_tokens - k
            for j in (j for j in range(len(prompts)) if j != i):
                engine.add_request(f"other-{i}-{k}-{j}", {"prompt_token_ids": prompts[j]}, params)
            steps, finished = 0, {}
            while steps <= 5 or engine.has_unfinished_requests():
                if steps == 5:
                    engine.add_request(f"cont-{i}-{k}", {"prompt_token_ids": [*prompt, *output[:k]]}, cont)
                finished |= {o.request_id: list(o.outputs[0].token_ids) for o in engine.step() if o.finished}
                steps += 1
            runs.append(finished[f"cont-{i}-{k}"])
        continued.append(runs)
    return continued


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
