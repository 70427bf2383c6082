"""A prompt cut inside a UTF-8 character (a migrated request's) is not echoed back: the first
output token that completes the character emits that character, as an uninterrupted stream does."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from vllm import SamplingParams
from vllm.tokenizers import TokenizerLike, get_tokenizer
from vllm.v1.engine.detokenizer import FastIncrementalDetokenizer

from glmserve.serving.tiny.create import default_cache_dir
from glmserve.serving.vllm_plugin import resume_detokenizer

TEXT = "Hello world 😀 and more"  # the emoji is four byte tokens in glm-4.6-tiny's tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> TokenizerLike:
    resume_detokenizer.apply()
    return get_tokenizer(str(default_cache_dir()))


def _output(tokenizer: TokenizerLike, prompt: list[int], generated: list[int]) -> str:
    request = SimpleNamespace(
        request_id="r", prompt_token_ids=prompt, sampling_params=SamplingParams(skip_special_tokens=False)
    )
    detokenizer = FastIncrementalDetokenizer(tokenizer, request)  # type: ignore[arg-type]
    return "".join(detokenizer.decode_next(token) for token in generated)


@pytest.mark.parametrize("cut", range(7, 12))
def test_a_continuation_emits_exactly_what_the_uninterrupted_stream_does(tokenizer: TokenizerLike, cut: int) -> None:
    prompt = tokenizer.encode("Tell me.", add_special_tokens=False)
    output = tokenizer.encode(TEXT, add_special_tokens=False)
    uninterrupted = _output(tokenizer, prompt, output)
    assert uninterrupted == TEXT
    before = _output(tokenizer, prompt, output[:cut])  # what the failed engine delivered
    assert before + _output(tokenizer, prompt + output[:cut], output[cut:]) == uninterrupted


def test_garbage_bytes_are_held_as_a_stream_holds_them(tokenizer: TokenizerLike) -> None:
    held = resume_detokenizer.held_back(tokenizer.decode, tokenizer.encode("ok 😀", add_special_tokens=False)[:-2])
    assert held == 2
    assert resume_detokenizer.held_back(tokenizer.decode, tokenizer.encode("ok", add_special_tokens=False)) == 0
