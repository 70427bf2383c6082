"""The capacity planner against Zhipu's GPU table (docs/reference/glm-4.6.md) and its own rules."""

from __future__ import annotations

import pytest

from glmserve.common.capacity import Layout, Workload, fit, kv_bytes_per_token
from glmserve.common.catalogue import get_model
from glmserve.common.errors import ConfigError
from glmserve.common.gpus import GB, get_gpu
from glmserve.common.layouts import candidate_layouts
from glmserve.common.planner import GroupCapacity, PoolRequest, plan_deployment, search

FULL_CONTEXT = 128 * 1024

# precision -> GPUs per replica on (H100, H200), at a short context and at full 128K context, batch 8, MTP on.
ZHIPU = {
    "glm-4.6": {"short": (16, 8), "full": (32, 16)},
    "glm-4.6-fp8": {"short": (8, 4), "full": (16, 8)},
}


@pytest.mark.parametrize("model", sorted(ZHIPU))
@pytest.mark.parametrize(("gpu", "column"), [("H100", 0), ("H200", 1)])
@pytest.mark.parametrize("context", [4096, 16384, 32768])
def test_zhipu_table_short_context(model: str, gpu: str, column: int, context: int) -> None:
    chosen = search(Workload(get_model(model), context), get_gpu(gpu), 8).chosen
    assert chosen is not None
    assert chosen.gpus == ZHIPU[model]["short"][column]
    assert chosen.nodes == max(1, chosen.gpus // 8)


@pytest.mark.parametrize("model", sorted(ZHIPU))
@pytest.mark.parametrize(("gpu", "column"), [("H100", 0), ("H200", 1)])
def test_zhipu_table_full_context_doubles(model: str, gpu: str, column: int) -> None:
    chosen = search(Workload(get_model(model), FULL_CONTEXT), get_gpu(gpu), 8).chosen
    assert chosen is not None
    assert chosen.gpus == ZHIPU[model]["full"][column] == 2 * ZHIPU[model]["short"][column]


def test_kv_cache_per_token_matches_the_reference() -> None:
    # 2 x 92 layers x 8 KV heads x 128 = 188,416 values = 368 KiB in BF16, + the MTP layer's 1/92.
    model = get_model("glm-4.6")
    assert model.kv_bytes_per_token() == 368 * 1024
    assert kv_bytes_per_token(Workload(model, 1, mtp=True)) == pytest.approx(368 * 1024 * 93 / 92)
    assert kv_bytes_per_token(Workload(model, 1, mtp=False)) == 368 * 1024


def test_per_gpu_memory_of_fp8_on_eight_h100() -> None:
    plan = fit(Workload(get_model("glm-4.6-fp8"), 32768), get_gpu("H100"), 8, Layout(8))
    mem = plan.memory
    assert mem.usable == 72 * GB  # 80 GB x 0.9
    assert mem.weights == pytest.approx(356.79e9 / 8, rel=1e-4)  # ~355 GB of FP8 weights over 8 GPUs
    assert mem.kv_cache == pytest.approx(8 * 32768 * 368 * 1024 * 93 / 92 / 8)
    assert mem.fits
    assert mem.headroom == pytest.approx(mem.usable - mem.total)


def test_full_context_bf16_on_h100_is_short_at_16_gpus() -> None:
    """The one row of the table that is close: 16 GPUs miss by about 3 GB per GPU."""
    plan = fit(Workload(get_model("glm-4.6"), FULL_CONTEXT), get_gpu("H100"), 8, Layout(8, 2, 16))
    assert not plan.memory.fits
    assert -4 * GB < plan.memory.headroom < -2 * GB


def test_multi_node_layouts_divide_the_experts() -> None:
    gpus = [layout.gpus for layout in candidate_layouts(get_model("glm-4.6").arch, 8)]
    assert gpus == [1, 2, 4, 8, 16, 32, 40, 80, 160]  # 24 GPUs would split 160 experts unevenly


def test_fixed_layout_is_checked() -> None:
    with pytest.raises(ConfigError, match="tensor 3 and the 8 KV heads must divide one another"):
        search(Workload(get_model("glm-4.6"), 4096), get_gpu("H100"), 8, Layout(3))
    with pytest.raises(ConfigError, match="expert 24 does not divide the 160 routed experts"):
        search(Workload(get_model("glm-4.6"), 4096), get_gpu("H100"), 8, Layout(8, 3, 24))
    with pytest.raises(ConfigError, match="tensor 16 exceeds the 8 GPUs of one node"):
        search(Workload(get_model("glm-4.6"), 4096), get_gpu("H100"), 8, Layout(16))


def test_explain_shows_the_arithmetic_of_every_layout_tried() -> None:
    result = search(Workload(get_model("glm-4.6"), FULL_CONTEXT), get_gpu("H100"), 8)
    text = result.explain()
    assert [p.gpus for p in result.tried] == [1, 2, 4, 8, 16, 32]
    assert "tensor 8 x data 2, expert 16 = 16 H100" in text
    assert "short by 3.05 GB per GPU" in text
    assert "4 seq x 131072 tokens x 376832 B x 93/92 layers / tensor 8 =  24.96 GB" in text
    assert text.endswith("=> 32 x H100 per replica (4 node(s))")


def test_tiny_model_replicates_kv_heads_beyond_its_kv_head_count() -> None:
    plan = fit(Workload(get_model("glm-4.6-tiny"), 8192), get_gpu("H100"), 8, Layout(8))
    narrow = fit(Workload(get_model("glm-4.6-tiny"), 8192), get_gpu("H100"), 8, Layout(2))
    assert plan.memory.kv_cache == narrow.memory.kv_cache  # 2 KV heads: 8 ranks hold 4 copies
    assert "x 4 (KV heads replicated)" in plan.explain()


def _pool(name: str, group: str, model: str, gpu: str, replicas: int = 1) -> PoolRequest:
    return PoolRequest(name, group, get_gpu(gpu), 8, replicas, replicas, Workload(get_model(model), 32768))


def test_deployment_on_too_small_a_node_group_names_the_shortfall() -> None:
    groups = {"h100": GroupCapacity("h100", max_nodes=1, gpus_per_node=8, gpu="H100")}
    plan = plan_deployment([_pool("prefill", "h100", "glm-4.6", "H100")], groups)
    assert not plan.feasible
    assert plan.shortfalls == (
        "node group h100 allows at most 1 node(s) of 8 H100 but prefill 1 x 16 GPUs (2 node(s)) need 2 node(s):"
        " short by 1 node(s) (8 H100 GPUs)",
    )


def test_pools_sharing_a_node_group_add_up() -> None:
    groups = {"h200": GroupCapacity("h200", max_nodes=2, gpus_per_node=8, gpu="H200")}
    # Two 4-GPU prefill replicas share one 8-GPU node.
    fits = plan_deployment(
        [_pool("prefill", "h200", "glm-4.6-fp8", "H200", 2), _pool("decode", "h200", "glm-4.6-fp8", "H200")], groups
    )
    assert fits.feasible
    assert [p.replica.gpus for p in fits.pools if p.replica] == [4, 4]
    too_many = plan_deployment(
        [_pool("prefill", "h200", "glm-4.6-fp8", "H200", 3), _pool("decode", "h200", "glm-4.6-fp8", "H200", 1)],
        groups,
    )
    assert too_many.shortfalls == (
        "node group h200 allows at most 2 node(s) of 8 H200 but prefill 3 x 4 GPUs (2 node(s))"
        " + decode 1 x 4 GPUs (1 node(s)) need 3 node(s): short by 1 node(s) (8 H200 GPUs)",
    )
