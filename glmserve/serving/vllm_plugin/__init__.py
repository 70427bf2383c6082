"""glmserve's vLLM plugin (`vllm.general_plugins` entry point `glmserve`).

vLLM runs `register()` in every process it starts (API server, engine core, workers), so
each fix here applies wherever the code it fixes runs. Fixes are written against one vLLM
release and refuse to load on another: a silent no-op after an upgrade would be worse.
"""

from __future__ import annotations

import functools

SUPPORTED_VLLM = "0.32.0"


class UnsupportedVllmError(RuntimeError):
    pass


def check_version(version: str) -> None:
    if version != SUPPORTED_VLLM:
        raise UnsupportedVllmError(
            f"glmserve's vLLM plugin patches vLLM {SUPPORTED_VLLM} but found {version}; "
            "re-check each fix in glmserve/serving/vllm_plugin against the new release"
        )


@functools.cache
def register() -> None:
    import vllm

    check_version(vllm.__version__)
    from glmserve.serving.vllm_plugin import (
        cpu_data_parallel,
        cpu_expert_parallel,
        cpu_nixl,
        cpu_polite_readers,
        glm_resume,
        resume_detokenizer,
        tool_grammar,
    )

    tool_grammar.apply()
    glm_resume.apply()
    resume_detokenizer.apply()
    cpu_expert_parallel.apply()
    cpu_data_parallel.apply()
    cpu_nixl.apply()
    cpu_polite_readers.apply()
