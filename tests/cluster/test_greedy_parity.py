"""Greedy output through the cluster (prefill and decode on different hosts, the KV cache crossing the
bridge) equals vLLM offline on the same checkpoint, computed before the cluster started; the
colocated `glmserve up` equals the same offline vLLM (tests/serving/test_greedy_parity.py), so the
cluster answers as `glmserve up` does."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import RunningCluster, greedy_completions

pytestmark = pytest.mark.slow


def test_greedy_completions_through_the_cluster_equal_offline_vllm(tiny_cluster: RunningCluster) -> None:
    prompts, served = greedy_completions(tiny_cluster)
    assert prompts == tiny_cluster.offline["greedy_prompt_token_ids"]
    assert all(len(tokens) > 0 for tokens in served)
    assert served == tiny_cluster.offline["greedy"]
