"""GLM tool calls under a grammar: bounded whitespace, and whitespace-insensitive values.

1. vLLM builds tool-call grammars from xgrammar's builtin structural tags without passing
   `max_whitespace_cnt`, so `disable_any_whitespace` never reaches them: every whitespace slot
   accepts unbounded runs, and a model can emit spaces and tabs until `max_tokens` without
   naming an argument (measured on glm-4.6-tiny: a forced call spent 100 tokens on whitespace
   and returned `{}`). Upstream fix: pass `max_whitespace_cnt` in
   `vllm/tool_parsers/structural_tag_registry.py::get_model_structural_tag`.
2. xgrammar's `glm_xml` grammar treats whitespace around every `<arg_value>` as insignificant
   (even with whitespace bounded, an enum of "Berlin" came back as "\\tBerlin\\r"), but vLLM's
   glm45 parser keeps it as part of the value, so the call fails its own schema. Upstream fix:
   strip values in `vllm/parser/glm47_moe.py::_glm47_arg_converter`, as the GLM-4.5 parser did.
   Stripping keeps streamed prefixes consistent: strip(v) is a prefix of strip(v + more).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

# xgrammar rejects 0; GLM-4.6 itself separates its tool-call tags with single newlines.
MAX_WHITESPACE = 1


def bounded_structural_tag(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("max_whitespace_cnt", MAX_WHITESPACE)
        return original(*args, **kwargs)

    return bounded


def stripping_arg_converter(original: Callable[[str, bool], str]) -> Callable[[str, bool], str]:
    @functools.wraps(original)
    def stripped(raw_args: str, partial: bool) -> str:
        params = json.loads(original(raw_args, partial))
        return json.dumps(
            {key: value.strip() if isinstance(value, str) else value for key, value in params.items()},
            ensure_ascii=False,
        )

    return stripped


def apply() -> None:
    from vllm.parser import glm47_moe
    from vllm.tool_parsers import structural_tag_registry as registry

    registry.get_xgrammar_model_structural_tag = bounded_structural_tag(registry.get_xgrammar_model_structural_tag)
    glm47_moe._glm47_arg_converter = stripping_arg_converter(glm47_moe._glm47_arg_converter)  # type: ignore[assignment]
    # The parser config captures the converter when first built; rebuild it with ours.
    glm47_moe.glm47_moe_config.cache_clear()
