from pathlib import Path

from glmserve.common.config import ServeConfig
from glmserve.serving.engine.args import GIB, engine_kwargs
from glmserve.serving.models import ResolvedModel

TINY = ResolvedModel("glm-4.6-tiny", Path("/m"), 8192, thinking_default=False)
FULL = ResolvedModel("glm-4.6", Path("/m"), 202752, thinking_default=True)


def test_cpu_engine_arguments() -> None:
    kw = engine_kwargs(TINY, ServeConfig(kv_cache_gib=2, max_ongoing_requests=8, max_queued_requests=4), "cpu")
    assert kw["tool_call_parser"] == kw["reasoning_parser"] == "glm45"
    assert kw["enable_auto_tool_choice"] and kw["tool_strict_level"] == "parameter"
    assert kw["structured_outputs_config"]["disable_any_whitespace"] is True
    assert kw["default_chat_template_kwargs"] == {"enable_thinking": False}
    assert kw["enforce_eager"] and kw["kv_cache_memory_bytes"] == 2 * GIB
    assert (kw["max_num_seqs"], kw["max_num_queued_reqs"]) == (8, 12)
    assert kw["max_model_len"] == 8192 and kw["enable_prompt_tokens_details"]


def test_gpu_engine_keeps_cuda_graphs_and_memory_fraction() -> None:
    kw = engine_kwargs(FULL, ServeConfig(max_model_len=131072), "gpu")
    assert "enforce_eager" not in kw and "kv_cache_memory_bytes" not in kw
    assert kw["max_model_len"] == 131072
    assert kw["default_chat_template_kwargs"] == {"enable_thinking": True}


def test_a_prefill_engines_shutdown_waits_for_its_kv_pulls_within_the_drain() -> None:
    cfg = ServeConfig(disaggregated=True, drain_timeout_s=90.5)
    assert engine_kwargs(TINY, cfg, "cpu", "prefill")["shutdown_timeout"] == 91
    assert "shutdown_timeout" not in engine_kwargs(TINY, cfg, "cpu", "decode")
    assert "shutdown_timeout" not in engine_kwargs(TINY, cfg, "cpu")
