"""Greedy output through the cluster (prefill and decode on different hosts, the KV cache crossing the
bridge) equals vLLM offline on the same checkpoint, computed before the cluster started; the
colocated `glmserve up` equals the same offline vLLM (tests/serving/test_greedy_parity.py), so the
cluster answers as `glmserve up` does."""

from __future__ import annotations

import pytest
from openai import OpenAI

from tests.cluster.conftest import GREEDY_MAX_TOKENS, GREEDY_PROMPTS, RunningCluster

pytestmark = pytest.mark.slow


def test_greedy_completions_through_the_cluster_equal_offline_vllm(tiny_cluster: RunningCluster) -> None:
    client = OpenAI(base_url=tiny_cluster.base_url, api_key=tiny_cluster.pro_key, timeout=120, max_retries=0)
    prompts, served = [], []
    for prompt in GREEDY_PROMPTS:
        reply = client.completions.create(
            model=tiny_cluster.model, prompt=prompt, max_tokens=GREEDY_MAX_TOKENS, temperature=0,
            extra_body={"return_token_ids": True},
        )  # fmt: skip
        prompts.append(reply.choices[0].model_extra["prompt_token_ids"])  # type: ignore[index]
        served.append(reply.choices[0].model_extra["token_ids"])  # type: ignore[index]
    assert prompts == tiny_cluster.offline["greedy_prompt_token_ids"]
    assert all(len(tokens) > 0 for tokens in served)
    assert served == tiny_cluster.offline["greedy"]
