"""The official `openai` SDK against `glmserve up`: chat, streaming, completions, models, usage."""

from __future__ import annotations

import pytest

from tests.serving.conftest import Stack

pytestmark = pytest.mark.slow

MODEL = "glm-4.6-tiny"
HELLO = [{"role": "user", "content": "Say hello to the platform team."}]


def test_models_list(stack: Stack) -> None:
    models = stack.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert stack.client().models.retrieve(MODEL).id == MODEL


def test_chat_non_streaming(stack: Stack) -> None:
    r = stack.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content  # thinking is off by default for the tiny model: text is content
    assert choice.finish_reason in ("length", "stop")
    assert r.usage is not None
    assert r.usage.completion_tokens == 12 or choice.finish_reason == "stop"
    assert r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_matches_non_streaming(stack: Stack) -> None:
    client = stack.client()
    full = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        full.choices[0].finish_reason
    ]
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert usage.completion_tokens == full.usage.completion_tokens  # type: ignore[union-attr]


def test_stream_without_include_usage_has_no_usage_chunk(stack: Stack) -> None:
    chunks = list(
        stack.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, temperature=0, stream=True)
    )
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_cached_tokens_reported_for_repeated_prefix(stack: Stack) -> None:
    # Longer than several KV blocks, so a repeat hits the prefix cache.
    long_prompt = [{"role": "user", "content": " ".join(f"fact {i}: the sky is blue." for i in range(120))}]
    client = stack.client()
    first = client.chat.completions.create(model=MODEL, messages=long_prompt, max_tokens=2, temperature=0)
    second = client.chat.completions.create(model=MODEL, messages=long_prompt, max_tokens=2, temperature=0)
    assert first.usage and second.usage
    assert second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert 0 < cached <= second.usage.prompt_tokens


def test_completions(stack: Stack) -> None:
    client = stack.client()
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.choices[0].text and r.usage and r.usage.completion_tokens == 8
    streamed = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text
