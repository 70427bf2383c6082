"""glm-4.6-tiny: deterministic, GLM-4.6's tokens and chat format, and really GLM-4.6's architecture."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from glmserve.common.catalogue import GLM_4_6_ARCH, SPECIAL_TOKENS, TINY_MODEL, get_model
from glmserve.serving.tiny.create import MANIFEST, create_tiny
from tests.helpers.offline_vllm import run_offline


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny(tmp_path_factory.mktemp("tiny") / TINY_MODEL, progress=lambda _: None)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_weights(tiny: Path, tmp_path: Path) -> None:
    again = create_tiny(tmp_path / "again", progress=lambda _: None)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert _sha(again / name) == _sha(tiny / name), name
    other = create_tiny(tmp_path / "other", seed=1, progress=lambda _: None)
    assert _sha(other / "model.safetensors") != _sha(tiny / "model.safetensors")


def test_existing_checkpoint_is_reused_and_foreign_dirs_are_refused(tiny: Path, tmp_path: Path) -> None:
    before = (tiny / MANIFEST).stat().st_mtime_ns
    create_tiny(tiny, progress=lambda _: None)
    assert (tiny / MANIFEST).stat().st_mtime_ns == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        create_tiny(foreign, progress=lambda _: None)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_config_has_glm46_architecture_at_toy_size(tiny: Path) -> None:
    config = json.loads((tiny / "config.json").read_text())
    real = GLM_4_6_ARCH.hf_config()
    assert config["architectures"] == ["Glm4MoeForCausalLM"]
    # Every feature switch of the real model is on in the tiny one.
    switches = ("attention_bias", "use_qk_norm", "partial_rotary_factor", "routed_scaling_factor", "n_group")
    switches += ("topk_group", "norm_topk_prob", "num_nextn_predict_layers", "n_shared_experts", "rope_theta")
    for key in switches:
        assert config[key] == real[key], key
    assert 0 < config["first_k_dense_replace"] < config["num_hidden_layers"]
    assert config["num_attention_heads"] % config["num_key_value_heads"] == 0


def test_weights_follow_the_published_layout(tiny: Path) -> None:
    arch = get_model(TINY_MODEL).arch
    with safe_open(str(tiny / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        bias = f.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias")
    assert "model.layers.0.mlp.gate_proj.weight" in names  # dense first layer
    assert f"model.layers.1.mlp.experts.{arch.num_routed_experts - 1}.down_proj.weight" in names
    assert "model.layers.1.mlp.shared_experts.up_proj.weight" in names
    assert f"model.layers.{arch.num_layers}.eh_proj.weight" in names  # the MTP layer
    assert bias.dtype == torch.float32


def test_tokenizer_matches_model_and_carries_glm_tokens(tiny: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    vocab_size = json.loads((tiny / "config.json").read_text())["vocab_size"]
    assert len(tokenizer) == vocab_size
    for token in SPECIAL_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.decode(ids) == token, token
    # Every id the model can sample decodes to something.
    assert sum(1 for i in range(vocab_size) if tokenizer.decode([i]) == "") == 0


def test_chat_template_renders_glm46_format(tiny: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
        {"role": "tool", "content": "sunny"},
    ]  # fmt: skip
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert text.startswith("[gMASK]<sop><|system|>\n# Tools\n")
    assert '{"type": "function", "function": {"name": "get_weather"' in text
    assert "<|system|>\nBe brief.<|user|>\nWeather in Paris?<|assistant|>\n<think></think>" in text
    assert "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n" in text
    assert "<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>" in text
    assert text.endswith("<|observation|>\n<tool_response>\nsunny\n</tool_response><|assistant|>")
    off = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert off.endswith("Weather in Paris?/nothink<|assistant|>\n<think></think>")
    kept = tokenizer.apply_chat_template(
        [*messages[:2], {"role": "assistant", "content": "Sunny.", "reasoning_content": "Check the sky."}],
        tokenize=False,
    )
    assert kept.endswith("<|assistant|>\n<think>Check the sky.</think>\nSunny.")


@pytest.mark.slow
def test_vllm_logits_equal_transformers(tiny: Path, tmp_path: Path) -> None:
    """The checkpoint is GLM-4.6's architecture: vLLM's Glm4MoeForCausalLM and transformers' agree."""
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    prompt = tokenizer("The capital of France is Paris, and the capital of Germany is").input_ids
    steps = 3
    vllm = run_offline({"model": str(tiny), "dtype": "float32", "logits": [prompt], "logit_steps": steps}, tmp_path)
    result = vllm["logits"][0]
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    sequence = list(prompt)
    for step in range(steps):
        with torch.no_grad():
            expected = model(torch.tensor([sequence])).logits[0, -1]
        got = torch.tensor(result["steps"][step])
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-4
        sequence.append(result["tokens"][step])
