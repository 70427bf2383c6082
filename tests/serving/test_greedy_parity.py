"""The platform path corrupts nothing: greedy output equals vLLM offline on the same checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from glmserve.serving.tiny.create import default_cache_dir
from tests.helpers.offline_vllm import run_offline
from tests.serving.conftest import Stack

pytestmark = pytest.mark.slow

MAX_TOKENS = 24
CHATS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "List three colours. " * 20}],
]


def test_greedy_chat_and_completion_equal_offline_vllm(stack: Stack, tmp_path: Path) -> None:
    client = stack.client()
    prompts, served = [], []
    for messages in CHATS:
        r = client.chat.completions.create(
            model="glm-4.6-tiny",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=MAX_TOKENS,
            temperature=0,
            extra_body={"return_token_ids": True},
        )
        prompts.append(r.model_extra["prompt_token_ids"])  # type: ignore[index]
        served.append(r.choices[0].model_extra["token_ids"])  # type: ignore[index]
    c = client.completions.create(
        model="glm-4.6-tiny", prompt="Once upon a time", max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    prompts.append(c.choices[0].model_extra["prompt_token_ids"])  # type: ignore[index]
    served.append(c.choices[0].model_extra["token_ids"])  # type: ignore[index]

    offline = run_offline(
        {"model": str(default_cache_dir()), "greedy": prompts, "max_tokens": MAX_TOKENS, "max_model_len": 8192},
        tmp_path,
    )
    assert offline["greedy"] == served
    assert all(len(tokens) > 0 for tokens in served)
