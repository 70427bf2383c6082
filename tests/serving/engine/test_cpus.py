from glmserve.serving.engine.cpus import PoolRanks, assign_cores


def test_prefill_and_decode_get_disjoint_cores() -> None:
    plan = assign_cores([PoolRanks("prefill", 1, 1), PoolRanks("decode", 1, 1)], num_cores=2)
    assert plan == {"prefill": ["0"], "decode": ["1"]}


def test_replicas_and_tensor_ranks_split_the_machine() -> None:
    plan = assign_cores([PoolRanks("prefill", 1, 2), PoolRanks("decode", 2, 1)], num_cores=8)
    assert plan == {"prefill": ["0-1|2-3"], "decode": ["4-5", "6-7"]}


def test_a_single_engine_keeps_vllm_default() -> None:
    assert assign_cores([PoolRanks("colocated", 1, 1)], num_cores=2) == {"colocated": []}


def test_more_ranks_than_cores_share_single_cores_round_robin() -> None:
    plan = assign_cores([PoolRanks("prefill", 1, 1), PoolRanks("decode", 2, 1)], num_cores=2)
    assert plan == {"prefill": ["0"], "decode": ["1", "0"]}
