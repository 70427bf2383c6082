"""A GLM stream continued past `</think>` (a migrated request) parses content, not reasoning;
every other stream starts as vLLM starts it."""

from __future__ import annotations

import pytest
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.parser.glm47_moe import Glm47MoeParser
from vllm.tokenizers import TokenizerLike, get_tokenizer

from glmserve.serving.tiny.create import default_cache_dir
from glmserve.serving.vllm_plugin import glm_resume

REQUEST = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])


@pytest.fixture(scope="module")
def tokenizer() -> TokenizerLike:
    glm_resume.apply()
    return get_tokenizer(str(default_cache_dir()))


def _stream(tokenizer: TokenizerLike, prompt: list[int], text: str) -> tuple[str, str]:
    """(reasoning, content) the parser streams for `text` generated after `prompt`."""
    parser = Glm47MoeParser(tokenizer)
    reasoning, content = "", ""
    for token in tokenizer.encode(text, add_special_tokens=False):
        delta = parser.parse_delta(tokenizer.decode([token]), [token], REQUEST, prompt_token_ids=prompt, finished=False)
        if delta is not None:
            reasoning += delta.reasoning or ""
            content += delta.content or ""
    return reasoning, content


def test_a_stream_continued_after_its_reasoning_is_content(tokenizer: TokenizerLike) -> None:
    turn = tokenizer.encode("<|assistant|><think>plan</think>Hello", add_special_tokens=False)
    assert _stream(tokenizer, turn, " world") == ("", " world")  # its leading space kept: the answer had text


def test_a_stream_continued_inside_its_reasoning_stays_reasoning(tokenizer: TokenizerLike) -> None:
    turn = tokenizer.encode("<|assistant|><think>plan", add_special_tokens=False)
    assert _stream(tokenizer, turn, " more</think>Hi") == (" more", "Hi")


def test_a_new_turn_starts_in_reasoning_as_before(tokenizer: TokenizerLike) -> None:
    history = tokenizer.encode("<|assistant|><think>old</think>done<|user|>q<|assistant|>", add_special_tokens=False)
    assert _stream(tokenizer, history, "<think>hm</think>Yes") == ("hm", "Yes")
