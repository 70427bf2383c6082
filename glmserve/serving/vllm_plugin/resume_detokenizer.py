"""A prompt that ends inside a UTF-8 character is not echoed back as output.

vLLM primes each request's incremental detokenizer (tokenizers' `DecodeStream`) with its prompt.
A stream holds back text that ends in an incomplete character, and a prompt ending that way leaves
all of it held back: the first output token that completes the character emits the whole prompt's
text with it. Ordinary prompts end on whole characters; a request migrated off a failed engine
(glmserve.serving.ingress.migration) ends with the output already delivered, which a byte-level
tokenizer may have cut inside a character (an emoji, a rare CJK character). Here the stream is
primed with the prompt up to its last whole character and then steps through the held-back tokens,
as the failed engine's stream held them: the character is emitted once, when completed.
Upstream: `vllm/v1/engine/detokenizer.py::FastIncrementalDetokenizer.__init__`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

INCOMPLETE = "\ufffd"
# Tokens a held-back character can span (UTF-8 has at most 4 bytes), with room for byte runs
# that never form one (a stream holds those back too, until text follows).
MAX_HELD = 16
WINDOW = 8  # tokens decoded before a cut, to see whether the text there ends whole


def held_back(decode: Callable[[list[int]], str], ids: list[int]) -> int:
    """How many of `ids`' last tokens a DecodeStream would still hold back (0: none)."""
    for held in range(min(MAX_HELD, len(ids)) + 1):
        end = len(ids) - held
        if end == 0 or not decode(ids[max(0, end - WINDOW) : end]).endswith(INCOMPLETE):
            return held
    return 0  # garbage beyond the window: priming with all of it is what vLLM does


def priming_whole_characters(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def init(self: Any, tokenizer: Any, request: Any) -> None:
        original(self, tokenizer, request)
        ids = list(request.prompt_token_ids or ())
        skip = self.skip_special_tokens
        held = held_back(lambda part: self.tokenizer.decode(part, skip_special_tokens=skip), ids)
        if held:
            import tokenizers

            self.stream = tokenizers.decoders.DecodeStream(ids=ids[:-held], skip_special_tokens=skip)
            for token in ids[-held:]:
                self.stream.step(self.tokenizer, token)

    return init


def apply() -> None:
    from vllm.v1.engine.detokenizer import FastIncrementalDetokenizer

    FastIncrementalDetokenizer.__init__ = priming_whole_characters(  # type: ignore[method-assign]
        FastIncrementalDetokenizer.__init__
    )
