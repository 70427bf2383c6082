"""GLM's `thinking` switch: it changes the rendered prompt and where generated text lands."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tests.serving.conftest import Stack

pytestmark = pytest.mark.slow

MODEL = "glm-4.6-tiny"
ASK = [{"role": "user", "content": "Why is the sky blue?"}]


def _prompt_text(stack: Stack, thinking: str | None) -> tuple[str, object]:
    extra: dict[str, object] = {"return_token_ids": True}
    if thinking:
        extra["thinking"] = {"type": thinking}
    r = stack.client().chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, temperature=0, extra_body=extra)
    tokenizer = AutoTokenizer.from_pretrained(_checkpoint())
    return tokenizer.decode(r.model_extra["prompt_token_ids"]), r.choices[0].message  # type: ignore[index]


def _checkpoint() -> str:
    from glmserve.serving.tiny.create import default_cache_dir

    return str(default_cache_dir())


def test_thinking_switch_renders_glm_prompts(stack: Stack) -> None:
    on, _ = _prompt_text(stack, "enabled")
    off, _ = _prompt_text(stack, "disabled")
    default, _ = _prompt_text(stack, None)
    assert on.startswith("[gMASK]<sop><|user|>\nWhy is the sky blue?")
    assert on.endswith("<|assistant|>")
    assert off.endswith("Why is the sky blue?/nothink<|assistant|>\n<think></think>")
    assert default == off  # glm-4.6-tiny defaults to thinking off


def test_reasoning_and_content_are_separated(stack: Stack) -> None:
    _, thinking = _prompt_text(stack, "enabled")
    _, answering = _prompt_text(stack, "disabled")
    # With thinking on, GLM opens a <think> block: everything before </think> is reasoning.
    assert thinking.reasoning_content and not thinking.content  # type: ignore[attr-defined]
    assert answering.content and getattr(answering, "reasoning_content", None) is None


def test_streamed_reasoning_uses_reasoning_content(stack: Stack) -> None:
    chunks = list(
        stack.client().chat.completions.create(
            model=MODEL,
            messages=ASK,
            max_tokens=6,
            temperature=0,
            stream=True,
            extra_body={"thinking": {"type": "enabled"}},
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert reasoning
    assert all("reasoning" not in (d.model_extra or {}) for d in deltas)
    _, full = _prompt_text(stack, "enabled")
    assert reasoning.startswith(full.reasoning_content[:10])  # type: ignore[attr-defined]


def test_invalid_thinking_type_is_rejected(stack: Stack) -> None:
    with stack.http() as http:
        r = http.post(
            f"{stack.base_url}/chat/completions",
            json={"model": MODEL, "messages": ASK, "thinking": {"type": "sometimes"}},
        )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "thinking.type"
