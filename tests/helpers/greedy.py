"""Greedy token ids served over the OpenAI API and by vLLM offline, to compare the two."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openai import OpenAI

from glmserve.serving.tiny.create import default_cache_dir
from tests.helpers.offline_vllm import run_offline


def served_chats(
    client: OpenAI, model: str, chats: list[list[dict[str, Any]]], max_tokens: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Each chat's prompt token ids and its greedy output's, as the server reports them."""
    prompts, outputs = [], []
    for messages in chats:
        r = client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0,
            extra_body={"return_token_ids": True},
        )
        prompts.append(r.model_extra["prompt_token_ids"])  # type: ignore[index]
        outputs.append(r.choices[0].model_extra["token_ids"])  # type: ignore[index]
    return prompts, outputs


def offline_greedy(prompts: list[list[int]], max_tokens: int, workdir: Path) -> list[list[int]]:
    """vLLM offline's greedy outputs of the tiny checkpoint for the same prompt ids."""
    request = {"model": str(default_cache_dir()), "greedy": prompts, "max_tokens": max_tokens, "max_model_len": 8192}
    greedy: list[list[int]] = run_offline(request, workdir)["greedy"]
    return greedy
