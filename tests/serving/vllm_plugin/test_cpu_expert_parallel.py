import pytest
import torch

from glmserve.serving.vllm_plugin import UnsupportedVllmError, check_version
from glmserve.serving.vllm_plugin.cpu_expert_parallel import honour_expert_map, localize_topk


def test_non_local_experts_get_weight_zero_and_a_valid_local_id() -> None:
    # 4 global experts, this rank owns experts 2 and 3 (local ids 0 and 1).
    expert_map = torch.tensor([-1, -1, 0, 1], dtype=torch.int32)
    ids = torch.tensor([[0, 2], [3, 1], [2, 3]], dtype=torch.int32)
    weights = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5]])
    local_ids, local_weights = localize_topk(ids, weights, expert_map)
    assert local_ids.tolist() == [[0, 0], [1, 0], [0, 1]]
    assert torch.equal(local_weights, torch.tensor([[0.0, 0.4], [0.7, 0.0], [0.5, 0.5]]))
    assert local_ids.dtype == ids.dtype


def test_wrapper_rewrites_keyword_calls_and_passes_through_without_map() -> None:
    seen: dict[str, object] = {}

    def apply(self, output, hidden_states, w1, w2, topk_weights, topk_ids, activation, global_num_experts,  # noqa: PLR0917
              expert_map, a1q_scale, a2_scale):  # fmt: skip
        seen.update(ids=topk_ids.tolist(), weights=topk_weights.tolist(), expert_map=expert_map, a1q=a1q_scale)

    wrapped = honour_expert_map(apply)
    common = {"output": None, "hidden_states": None, "w1": None, "w2": None, "activation": None}
    wrapped(None, **common, topk_weights=torch.tensor([[1.0, 2.0]]), topk_ids=torch.tensor([[0, 1]]),
            global_num_experts=2, expert_map=torch.tensor([0, -1]), a1q_scale="s", a2_scale=None)  # fmt: skip
    assert seen == {"ids": [[0, 0]], "weights": [[1.0, 0.0]], "expert_map": None, "a1q": "s"}
    wrapped(None, **common, topk_weights=torch.tensor([[1.0]]), topk_ids=torch.tensor([[1]]),
            global_num_experts=2, expert_map=None, a1q_scale=None, a2_scale=None)  # fmt: skip
    assert seen["ids"] == [[1]]


def test_plugin_refuses_other_vllm_versions() -> None:
    check_version("0.32.0")
    with pytest.raises(UnsupportedVllmError, match=r"patches vLLM 0\.32\.0 but found 0\.33\.0"):
        check_version("0.33.0")
