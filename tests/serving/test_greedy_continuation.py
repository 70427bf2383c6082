"""Why a migrated greedy stream can differ from an uninterrupted run (docs/reliability.md,
"Exactness"): vLLM offline, on the prompts of test_migration_faults rendered as the ingress renders
them, continues each greedy output from its prompt plus its first k tokens while the other prompts
decode beside it (as on a serving engine), in the dtype the stack serves (bfloat16) and in float32. It is
token-exact in every case: what makes served continuations differ is not vLLM's prefill of the
delivered tokens. The printed top-2 gaps show how little it takes: bfloat16 logits tie exactly
at some steps (argmax then takes the lower id) and lead by one bfloat16 step at many more."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from glmserve.serving.engine.args import glm_serving_kwargs
from glmserve.serving.ingress.protocol import ChatRequest
from glmserve.serving.ingress.render import PromptRenderer
from glmserve.serving.tiny.create import default_cache_dir
from tests.helpers.offline_vllm import run_offline
from tests.serving.test_migration_faults import EXTRA, MAX_TOKENS, MODEL, PROMPTS

pytestmark = pytest.mark.slow

CUTS = [8, 40, 100]


def _prompt_ids() -> list[list[int]]:
    kwargs = glm_serving_kwargs(max_model_len=1024, thinking_default=True, max_seqs=64, max_queued=64)
    renderer = PromptRenderer(str(default_cache_dir()), kwargs)
    requests = [
        ChatRequest.model_validate(
            {"model": MODEL, "messages": [{"role": "user", "content": p}], "max_tokens": MAX_TOKENS, **EXTRA}
        )
        for p in PROMPTS
    ]
    return [asyncio.run(renderer.chat_tokens(r)) for r in requests]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_greedy_continuation_from_delivered_tokens(tmp_path: Path, dtype: str) -> None:
    # No prefix caching: the continuation is prefilled whole, as on a replica that never saw it.
    request = {
        "model": str(default_cache_dir()), "dtype": dtype, "greedy": _prompt_ids(), "max_tokens": MAX_TOKENS,
        "ignore_eos": True, "top2": True, "continue_at": CUTS, "max_model_len": 1024,
        "engine": {"enable_prefix_caching": False},
    }  # fmt: skip
    result = run_offline(request, tmp_path)
    gaps_all = [gap for gaps in result["greedy_top2_gap"] for gap in gaps]
    ties = [(i, step) for i, gaps in enumerate(result["greedy_top2_gap"]) for step, gap in enumerate(gaps) if gap == 0]
    one_step = sum(0 < gap <= 2**-7 for gap in gaps_all)  # bfloat16's step between logits in [1, 2)
    differing = []
    for output, gaps, runs in zip(result["greedy"], result["greedy_top2_gap"], result["continued"], strict=True):
        for k, run in zip(CUTS, runs, strict=True):
            first = next((k + i for i, (a, b) in enumerate(zip(run, output[k:], strict=True)) if a != b), None)
            if first is not None:
                differing.append((k, first, output[first], run[first - k], gaps[first]))
    print(
        f"{dtype}, beside decoding streams: of {len(gaps_all)} reference tokens,"
        f" {len(ties)} exact top-2 ties (stream, step): {ties}, {one_step} more within 1/128, smallest gap"
        f" above 0 {min(gap for gap in gaps_all if gap > 0):.2g};"
        f" differing continuations (cut, position, reference, continuation, reference gap): {differing}"
    )
    assert differing == []
