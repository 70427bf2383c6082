"""A GLM stream whose prompt already ended its reasoning starts in content.

vLLM's GLM-4.5/4.7 parser starts every stream in reasoning when thinking is on, whatever the
prompt holds. A request migrated off a failed engine (glmserve.serving.ingress.migration) arrives
with its prompt continued by the output already delivered; once that output passed `</think>`,
the new engine must go on parsing content, or it would report the rest of the answer as
reasoning. Scanning the prompt's current turn is what the parser's own `is_reasoning_end` does;
this hook (vLLM's `adjust_initial_state_from_prompt`, which GLM's parser leaves a no-op) starts
the stream in content when it says so. An ordinary prompt ends with the `<|assistant|>` turn
boundary, which is not a reasoning end: those streams start as before.
Upstream: `vllm/parser/glm47_moe.py::Glm47MoeParser` has no such override.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def resume_in_content(parser: Any, prompt_token_ids: Sequence[int]) -> None:
    from vllm.parser.engine.parser_engine_config import ParserState

    ids = list(prompt_token_ids)
    if not parser.thinking_enabled or not parser.is_reasoning_end(ids):
        return
    parser._engine.reset(initial_state=ParserState.CONTENT)
    parser._reasoning_ended = True
    # As vLLM's Gemma 4 parser does: a later default initialize_streaming() must not undo this.
    parser._streaming_initialized = True
    # Leading whitespace of an answer is held back until it has text; an answer already under way has.
    end = max(i for i, token in enumerate(ids) if token in parser.reasoning_end_token_ids)
    parser._content_has_nonws = bool(parser.model_tokenizer.decode(ids[end + 1 :]).strip())


def apply() -> None:
    from vllm.parser.glm47_moe import Glm47MoeParser

    Glm47MoeParser.adjust_initial_state_from_prompt = resume_in_content  # type: ignore[method-assign,assignment]
