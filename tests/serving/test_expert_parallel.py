"""Expert parallelism on the CPU backend (the plugin's fix): TP2 + EP gives TP1's greedy tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from glmserve.serving.tiny.create import create_tiny, default_cache_dir
from tests.helpers.offline_vllm import run_offline

pytestmark = pytest.mark.slow


def test_tp2_expert_parallel_equals_tp1(tmp_path: Path) -> None:
    checkpoint = str(create_tiny(default_cache_dir(), progress=lambda _: None))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    # The first prompt's tokens change if non-local experts keep their routing weights.
    prompts = [
        tokenizer("hello world, this is a test of expert parallelism").input_ids,
        tokenizer("the quick brown fox " * 30).input_ids,
    ]
    request = {"model": checkpoint, "dtype": "float32", "greedy": prompts, "max_tokens": 24, "max_model_len": 2048}
    tp1 = run_offline(request, tmp_path)
    ep = run_offline(
        {**request, "engine": {"tensor_parallel_size": 2, "enable_expert_parallel": True}},
        tmp_path,
        env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"},
    )
    assert ep["greedy"] == tp1["greedy"]
    assert all(len(tokens) == 24 for tokens in tp1["greedy"])
