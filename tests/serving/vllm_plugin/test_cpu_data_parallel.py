"""The uneven all-gather and reduce-scatter that DP + EP needs on CPU, over a real 2-rank Gloo group."""

from __future__ import annotations

import multiprocessing
import socket
from typing import Any

import pytest
import torch
import torch.distributed as dist

from glmserve.serving.vllm_plugin.cpu_data_parallel import all_gatherv, reduce_scatterv

pytestmark = pytest.mark.slow

SIZES = [3, 1]  # rank 0 holds 3 tokens, rank 1 one


def _rank(rank: int, port: int, results: Any) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mine = torch.arange(SIZES[rank] * 2, dtype=torch.bfloat16).reshape(SIZES[rank], 2) + 10 * rank
        ids = torch.full((SIZES[rank], 1), rank, dtype=torch.int32)
        whole = torch.arange(8, dtype=torch.float32).reshape(4, 2) * (rank + 1)
        results.put((
            rank,
            all_gatherv(None, mine, 0, SIZES).tolist(),
            all_gatherv(None, ids, 0, SIZES).tolist(),
            all_gatherv(None, mine.T, 1, SIZES).tolist(),
            reduce_scatterv(None, whole, 0, SIZES).tolist(),
            reduce_scatterv(None, whole.T, -1, SIZES).tolist(),
            reduce_scatterv(None, whole.to(torch.bfloat16), 0, SIZES).dtype == torch.bfloat16,
        ))  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_uneven_parts_gather_in_rank_order_and_scatter_their_sums() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    ranks = [ctx.Process(target=_rank, args=(r, port, results)) for r in range(2)]
    for p in ranks:
        p.start()
    found = dict((r[0], r[1:]) for r in (results.get(timeout=60) for _ in ranks))
    for p in ranks:
        p.join(timeout=30)
        assert p.exitcode == 0
    gathered = [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [10.0, 11.0]]
    summed = (torch.arange(8, dtype=torch.float32).reshape(4, 2) * 3).tolist()  # x1 + x2
    for rank in (0, 1):
        rows, ids, columns, scattered, scattered_t, keeps_bfloat16 = found[rank]
        assert rows == gathered
        assert ids == [[0], [0], [0], [1]]
        assert columns == torch.tensor(gathered).T.tolist()
        mine = slice(0, 3) if rank == 0 else slice(3, 4)
        assert scattered == summed[mine]
        assert scattered_t == torch.tensor(summed[mine]).T.tolist()
        assert keeps_bfloat16
