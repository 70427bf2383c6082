"""The platform path corrupts nothing: greedy output equals vLLM offline on the same checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.greedy import offline_greedy, served_chats
from tests.serving.conftest import Stack

pytestmark = pytest.mark.slow

MAX_TOKENS = 24
CHATS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "List three colours. " * 20}],
]


def test_greedy_chat_and_completion_equal_offline_vllm(stack: Stack, tmp_path: Path) -> None:
    client = stack.client()
    prompts, served = served_chats(client, "glm-4.6-tiny", CHATS, MAX_TOKENS)
    c = client.completions.create(
        model="glm-4.6-tiny", prompt="Once upon a time", max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    prompts.append(c.choices[0].model_extra["prompt_token_ids"])  # type: ignore[index]
    served.append(c.choices[0].model_extra["token_ids"])  # type: ignore[index]

    assert offline_greedy(prompts, MAX_TOKENS, tmp_path) == served
    assert all(len(tokens) > 0 for tokens in served)
